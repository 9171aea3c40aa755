"""What the tests stand on that is not a test: the protocol-faithful Kubernetes API server, and shared helpers."""
