"""Idempotency and event benchmarks: ``./scripts/bench-events`` (``python -m bench.events``).

Not part of ``./scripts/test``. Like ``bench.state`` (whose sandbox, statistics,
report and native load generator it reuses), it brings up its own three-region
sandbox through the real CLI, on base port 17000 with the default WAN matrix
(35/100/65 ms one way), measures, prints a table, writes
``bench/results/events-<UTC timestamp>.json`` and tears the sandbox down, also on
failure or Ctrl-C. Every figure is run in several rounds and reports the median
and the spread, against a baseline measured in the same run:

1. ``Begin`` + ``Complete`` latency on ``global`` idempotency storage, from each
   region (:mod:`bench.events.idem`), beside the floor of one quorum round trip:
   RTT(caller, leader of ``KV_mg__idempotency``) + the smallest RTT from that
   leader to a follower; also against a direct nats-py KV create and update of
   the same bucket. Goal: each call near the floor (median ≤ 1.2 x floor + 5 ms,
   the State API's criterion for ``Put STRONG``).
2. Publish throughput of one agent, async-acked (:mod:`bench.events.publish`):
   unary gRPC ``Publish`` from the native load generator at 64 in flight, against
   direct nats-py JetStream publishes to ``EV_<region>`` at the same concurrency.
   Goal: ≥ 5,000 events/s.
3. Cross-region delivery lag (:mod:`bench.events.lag`): Publish through A's agent
   → delivery to a consumer group on B's agent, per ordered pair, against a raw
   JetStream consumer on ``EVA_<B>``. Goal: p99 ≤ one-way WAN latency + 100 ms.
"""
