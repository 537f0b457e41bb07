"""One transport-agnostic service layer (proto in, proto out) behind gRPC and HTTP/JSON."""
