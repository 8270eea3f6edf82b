"""Run tags shared by jobs and automation: which runs write the telemetry database.

dagster.yaml lets one ``write`` run at a time out of the queue, because SQLite takes one writer at a time.
"""

TELEMETRY_DB_TAG = "autopack/telemetry-db"
WRITES = {TELEMETRY_DB_TAG: "write"}
READS = {TELEMETRY_DB_TAG: "read"}
