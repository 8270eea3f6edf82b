"""Middle tier: PostgreSQL, the CLI as a subprocess, the local Messages API server, in-process Dagster runs."""
