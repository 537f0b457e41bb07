"""Idempotency: a command runs once per idempotency key (DESIGN §4).

``model`` (the pure record state machine), ``store`` (records in a global
keyspace), ``service`` (the Idempotency API).
"""

from meridian.idempotency.model import StoredResponse

__all__ = ["StoredResponse"]
