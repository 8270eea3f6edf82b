"""The application layer: the one composition of collection, analysis, calibration, tasks and
reports, called alike by the CLI, the Dagster definitions and the benchmarks. No Dagster import."""
