"""The admin API: calls, errors, auth and cross-site guards, and fuzzing against its OpenAPI document."""
