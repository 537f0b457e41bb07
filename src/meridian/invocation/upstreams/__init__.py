"""Calls to this region's service instances: HTTP/1.1 and gRPC."""
