"""Workloads: clients that drive the real sandbox and record a history.

Each is a :class:`~meridian.chaos.workloads.base.Workload`: the keyspaces it
needs, ``setup``, ``run`` until told to stop, ``finish`` after the nemesis has
healed everything, and the checkers that judge its history.

Built: :mod:`register` (CAS register on ``global``), :mod:`bank` (transfers on
``global``), :mod:`replicated` (convergence and HLC), :mod:`idempotency`
(idempotent commands through ``client.once``: one effect and one response per
key) and :mod:`events` (producers and consumer groups in every region).
"""
