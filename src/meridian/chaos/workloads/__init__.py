"""Workloads: clients that drive the real sandbox and record a history.

Each is a :class:`~meridian.chaos.workloads.base.Workload`: the keyspaces it
needs, ``setup``, ``run`` until told to stop, ``finish`` after the nemesis has
healed everything, and the checkers that judge its history.

Built: :mod:`register` (CAS register on ``global``), :mod:`bank` (transfers on
``global``), :mod:`replicated` (convergence and HLC). The idempotent-commands
and events workloads plug in the same way once their APIs exist; their
checkers' history formats are in :mod:`meridian.chaos.checkers.effects` (and,
for events, to be written with the events API).
"""
