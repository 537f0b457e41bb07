"""Workload identity: the built-in CA, SPIFFE identities and mTLS contexts."""
