"""The whole process: settings, the CLI, health probes, drain on SIGTERM."""
