"""Helpers and fixtures every tier imports: databases, the local Messages API server, CLI runs."""
