"""The agent's two transports, gRPC and HTTP/JSON, over one API (``api``)."""
