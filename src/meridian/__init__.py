"""Meridian: a multi-region runtime on NATS JetStream for Go and Rust services."""

__version__ = "0.1.0"
