"""State API benchmarks: ``./scripts/bench-state`` (``python -m bench.state``).

Not part of ``./scripts/test``. The command brings up its own three-region
sandbox through the real CLI (base port 16000, the default WAN matrix
35/100/65 ms one way, a ``global`` keyspace ``bench`` and a ``replicated`` one
``benchrep``), measures, prints a table, writes
``bench/results/state-<UTC timestamp>.json`` and tears the sandbox down with
``sandbox down --purge``, also on failure or Ctrl-C.

Every figure is compared with a baseline measured in the same run:

1. ``Get EVENTUAL`` latency through the agent, over gRPC (``MeridianClient``)
   and HTTP/JSON, against a direct nats-py KV get of the same bucket from the
   same region: sequential calls on one connection, same key, interleaved
   rounds. Goal: agent ≤ 1.0x direct. A direct get is answered by any of the
   three replicas, most across the WAN, so the subset the local replica
   answered is shown too.
2. ``Put STRONG`` latency from each region against the floor the WAN allows:
   RTT(writer, stream leader) + the smallest RTT from the leader to a follower.
   Goal: median ≤ 1.2 x floor + 5 ms.
3. ``EVENTUAL`` reads per second of one agent process under concurrent gRPC
   load from helper processes, against direct KV gets from the same generator.
   Goal: ≥ 5,000/s.
4. ``STRONG`` writes per second through one agent against direct JetStream
   publishes to the same R3 bucket, at the same concurrency (64 in flight,
   distinct keys). Goal: ≥ 0.8x direct and ≥ 1,000/s unless direct is slower.
5. Replication lag of the ``replicated`` keyspace ``benchrep`` (``lww``), per
   ordered region pair W→R: Puts through W's agent, 20 ms apart, each value
   holding the send time, timed to the event of a ``Watch`` on R's agent, against
   a core NATS publish from W's regional server to a subscriber on R's, timed the
   same way. Raw JetStream consumers at R and the streams' store times split the
   lag into the agent's write path, JetStream sourcing and delivery to the
   watcher. Goal: p99 ≤ one-way WAN latency + 50 ms.

Alongside each figure it reports the CPU time of the load generator and of the
agent (its event-loop thread too, plus the region's nats-servers, the WAN
emulator and the whole machine), read from ``/proc`` before and after. With
``--py-spy`` it samples the agent during figures 3 and 4 and keeps the raw stacks
in ``bench/results/state-<UTC timestamp>/``.
"""
