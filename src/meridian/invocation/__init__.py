"""Invocation: calling services in this region or another, with failover (DESIGN §5).

``model`` (pure registry rules), ``resilience/`` (pure policies: breaker,
outlier, retry, budget, bulkhead, balancer, deadline), ``registry_store`` and
``registry`` (discovery), ``router`` (choosing an instance or region),
``upstreams/`` (HTTP and gRPC calls to instances), ``forwarding`` (calls
through a peer region's agent), ``service`` (the Invocation and Registry APIs).
"""
