"""bgproxy: a blue/green traffic switch for Kubernetes."""

__version__ = "0.1.0"
