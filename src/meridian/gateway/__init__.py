"""The global gateway, ``meridian gateway`` (DESIGN §5): the front door that sends
each client to the nearest healthy region and moves it within seconds of a
region failure. It stands in for GeoDNS/anycast.

- :mod:`meridian.gateway.model`: the decisions (health, order), pure;
- :mod:`meridian.gateway.server`: the reverse proxy and its own endpoints;
- :mod:`meridian.gateway.health`: the health checks of every region's agent;
- :mod:`meridian.gateway.metrics`: its Prometheus series;
- :mod:`meridian.gateway.cli`: the ``meridian gateway`` command.
"""

from meridian.gateway.server import REGION_RESPONSE_HEADER, Gateway, local_url

__all__ = ["REGION_RESPONSE_HEADER", "Gateway", "local_url"]
