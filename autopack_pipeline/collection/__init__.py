"""A telemetry collection run: phases from ``seeds/``, drained through the Builder."""
