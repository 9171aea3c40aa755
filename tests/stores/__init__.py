"""The state stores: memory, file, and the ConfigMap store against the test API server."""
