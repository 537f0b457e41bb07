"""Invocation benchmarks (issue 5): agent overhead and cross-region failover."""
