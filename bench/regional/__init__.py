"""``regional`` keyspace benchmarks: ``./scripts/bench-regional`` (``python -m bench.regional``).

Not part of ``./scripts/test``. The command brings up its own three-region
sandbox through the real CLI (base port 17500, the default WAN matrix
35/100/65 ms one way, mutual TLS, a ``regional`` keyspace ``profiles`` allowed
in us-east and eu-west and a ``global`` one ``bench``), measures, prints a
table, writes ``bench/results/regional-<UTC timestamp>.json`` and tears the
sandbox down with ``sandbox down --purge``, also on failure or Ctrl-C.

1. A regional Put from its home region (us-east) against the local quorum
   floor of the same run: a nats-py JetStream publish to a stream of the same
   shape and replica count in us-east's cluster. Goal: p50 ≤ 1.2 x floor + 5 ms.
   For context: a ``global`` Put from us-east and a Put from eu-west into the
   us-east partition, both of which cross the WAN.
2. BOUNDED(1 s) Gets from eu-west of keys homed in us-east, next to STRONG Gets
   of the same keys. Goal: ≥ 99 % served from eu-west's own copy, p50 far
   below the WAN round trip.

See :mod:`bench.regional.run` for how each figure is taken.
"""
