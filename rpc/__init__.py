"""gRPC edge (grpclib)."""
