"""Benchmarks for Meridian. Not part of ``./scripts/test``: a benchmark measures, a
test never depends on wall-clock speed. Each suite is a ``python -m bench.<suite>``
command with a wrapper in ``scripts/`` (for example ``scripts/bench-state``)."""
