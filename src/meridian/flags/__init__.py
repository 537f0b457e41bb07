"""Feature flags (DESIGN §6): flagd's format, stored in ``global``, evaluated locally.

- ``targeting``: flagd's JsonLogic subset (``fractional``, ``sem_ver``, ...), pure;
- ``model``: a flag's definition, its checks, storage form and evaluation, pure;
- ``store``: the ``_flags`` keyspace followed into the agent's cache;
- ``service``: FlagService (the OFREP endpoints are in ``transport.http.ofrep``);
- ``cli``: ``meridian flags``.
"""
