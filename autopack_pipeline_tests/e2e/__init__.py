"""Slow tier: the real dagster-webserver and dagster-daemon, driven through GraphQL and a headless browser."""
