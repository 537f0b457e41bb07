"""The global shop demo: ``meridian demo run`` (``./scripts/demo``).

A sandbox of three regions, the Go ``orders`` and Rust ``inventory`` example
services in each, and simulated shoppers in every region going through the
global gateway. Halfway through, one region is SIGKILLed and later brought
back, while the shoppers keep going. The report gives orders accepted and
rejected, latency per client region, the failover time, and checks that
nothing was oversold, no order was placed twice, nothing acknowledged was
lost, and every region's read model converged on the stored orders.

Modules:

- :mod:`~meridian.demo.options`: a run's settings, its sandbox configuration and ports;
- :mod:`~meridian.demo.binaries`: where the services' binaries are and how they are built;
- :mod:`~meridian.demo.fleet`: the service processes (start, kill, stop, wait until healthy);
- :mod:`~meridian.demo.shop`: the shoppers and what they were told;
- :mod:`~meridian.demo.audit`: the global state after the load, and the invariants;
- :mod:`~meridian.demo.verdict`: from the records and the audit to figures and checks;
- :mod:`~meridian.demo.report`: the report, as text and as JSON;
- :mod:`~meridian.demo.runner`: the phases, signals and clean-up;
- :mod:`~meridian.demo.leftovers`: the run's ports, and the last resort against stray processes;
- :mod:`~meridian.demo.cli`: ``meridian demo run`` and ``meridian demo down``.
"""
