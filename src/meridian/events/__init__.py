"""Events: per-region streams, their aggregates, consumer groups, push delivery
and cache invalidation (DESIGN §4).

``model`` (pure: topics, ids, start positions), ``streams`` (the region's
streams and consumers on NATS), ``component`` (keeps them ensured),
``delivery`` and ``push`` (getting events to subscribers), ``service`` (the
Events API).
"""
