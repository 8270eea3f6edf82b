"""The Dagster layer, the only package that imports dagster: assets with their checks, sensors,
schedules, jobs, resources, ops and the one Definitions object."""
