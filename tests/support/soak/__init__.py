"""The chaos soak behind a real Ingress: its cluster, workload, chaos actions, timeline and report."""
