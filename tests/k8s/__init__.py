"""Kubernetes: the test API server itself, replicas sharing a ConfigMap, and the manifests in deploy/."""
