"""NDJSON export and import of ``token_estimation_v2_events``.

Export writes one JSON object per event with the table's column names (``deliverables`` as a parsed
list instead of ``deliverables_json``), newest first, like Autopack's
``export_token_estimation_telemetry.py`` but with every column, ours included.

Import reads that format and Autopack's (no ``event_uid``, no ``actual_max_tokens``). Every line is
validated on its own; a bad line is reported with its number and reason and written verbatim to a
quarantine file, and the good lines are imported in batches, each batch one transaction. A line is
therefore either fully imported (run/tier/phase rows it needs plus the event) or not at all. Rows
without an ``event_uid`` get one derived from their content, so importing a file twice adds nothing.
Import keeps what the source had: the under-50-token guard of the live writer does not apply.

The modules: ``export`` (the writer of the NDJSON), ``records`` (one line validated into a row),
``importer`` (batches, quarantine, the report).
"""

from autopack_pipeline.storage.transfer.export import export_columns, export_to_file, iter_export, write_export
from autopack_pipeline.storage.transfer.importer import DEFAULT_BATCH_SIZE, ImportReport, import_events, import_file
from autopack_pipeline.storage.transfer.records import (
    MAX_ACTUAL_OUTPUT_TOKENS,
    MAX_PREDICTED_OUTPUT_TOKENS,
    REQUIRED_FIELDS,
    LineRejected,
    derive_event_uid,
    parse_line,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_ACTUAL_OUTPUT_TOKENS",
    "MAX_PREDICTED_OUTPUT_TOKENS",
    "REQUIRED_FIELDS",
    "ImportReport",
    "LineRejected",
    "derive_event_uid",
    "export_columns",
    "export_to_file",
    "import_events",
    "import_file",
    "iter_export",
    "parse_line",
    "write_export",
]
