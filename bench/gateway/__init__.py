"""Gateway failover benchmark: ``./scripts/bench-gateway`` (``python -m bench.gateway``).

Not part of ``./scripts/test``. Like the other benchmarks it brings up its own
three-region sandbox through the real CLI (base port 18000, the default WAN
matrix, 35/100/65 ms one way; the sandbox starts ``meridian gateway`` on base
port + 90), measures, prints a table, writes
``bench/results/gateway-<UTC timestamp>.json`` and tears the sandbox down, also
on failure or Ctrl-C.

A client sends ``GET /v1/status`` through the gateway with ``Meridian-Region:
eu-west`` every ~10 ms (each request on its own, so a stuck one holds up no
other), and each answer names the region that served it. In each round:

1. **Region kill** (:func:`bench.gateway.failover.kill_round`): every process
   of eu-west (its two nats-servers and its agent) gets SIGKILL, as
   ``meridian sandbox kill`` does. Measured: from the SIGKILL to the first
   success served by another region; from the SIGKILL to the moment the
   gateway marked eu-west down (its own ``since``); and the client requests that
   failed. Goal: failover ≤ 2 s in every round. Then ``meridian sandbox up``
   brings eu-west back before the next round.
2. **Frozen agent** (:func:`bench.gateway.failover.freeze_round`): eu-west's
   agent gets SIGSTOP: it still accepts connections but answers nothing, so only
   the health checks (``unhealthy_after`` timeouts in a row) can take it out.
   Same measurements, plus the requests stuck meanwhile; then SIGCONT. No goal:
   it shows the slower path, about ``health_interval_s`` + ``unhealthy_after`` x
   ``health_timeout_s``.

Every figure reports the median and the spread (p10..p90, min..max) over the
rounds.
"""
