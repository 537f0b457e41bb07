"""The verification harness (DESIGN §8): faults, workloads, checkers and reports.

- :mod:`~meridian.chaos.history`: the history model, one event per op event
  (invoke, ok, fail, info), serialised as JSON;
- :mod:`~meridian.chaos.checkers`: pure checkers that turn a history into
  verdicts (linearizability through the Porcupine Go command, bank, replicated
  convergence, HLC invariants, exactly-once effects and responses, events
  delivered, expected, ordered and once);
- :mod:`~meridian.chaos.nemesis`: faults against a running sandbox, each
  recorded with its timestamps;
- :mod:`~meridian.chaos.workloads`: clients driving the real sandbox;
- :mod:`~meridian.chaos.runner` and :mod:`~meridian.chaos.scenarios`: a run,
  and the named runs behind ``meridian chaos run SCENARIO``;
- :mod:`~meridian.chaos.report`: ``report.json`` and a self-contained
  ``report.html``.

Commands (each run brings up its own sandbox, base port 28000 by default; the
smoke suite uses 27000)::

    meridian chaos list                       # smoke scenarios, workloads, faults
    meridian chaos run register-partition     # one scenario -> report.json, report.html
    meridian chaos run bank-kill-global-server --sync-interval default --duration 60
    meridian chaos run commands-events-partition-kill
    meridian chaos run events-kill-agent --duration 30
    meridian chaos matrix                     # every fault x every workload (scripts/chaos)

The smoke suite is ``tests/chaos``; the Porcupine command is ``tools/porcupine``.
"""
