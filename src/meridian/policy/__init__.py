"""Policy: who may do what, decided in each agent with Cedar (DESIGN §7).

- ``model``: the schema, actions, principals and accesses (pure);
- ``engine``: a validated policy set and the cached decisions made with it;
- ``rpcs``: what each RPC of the contract asks to do;
- ``guard``: the one enforcement point, around every handler;
- ``store``: the set in a ``global`` keyspace, watched into every agent;
- ``service``: PolicyService (push, read, explain).

Other capabilities use policy only through the names below.
"""

from __future__ import annotations

from meridian.policy.guard import Guard
from meridian.policy.model import Access, Principal

__all__ = ["Access", "Guard", "Principal"]
