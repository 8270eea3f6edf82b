"""Dump what ``services.pipeline.analyse_events`` computes over a columnar store to one JSON file.

    PYTHONPATH=. .venv/bin/python benchmarks/analysis_document.py STORE_DIR OUT.json

The same chain as ``benchmarks/run.py``'s ``analyse`` child (every event, predictions as recorded, the
gate forced open, no report written): clean samples, tier metrics with strata and the last 7 days,
both calibrations, their patch sections, frontier and cost per group, and the patch document. Keys
are sorted and the patch's ``generated_at`` dropped, so two runs of the same code over the same store
give the same bytes: ``cmp`` of the files before and after a speed change shows any figure it moved.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _without_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_clock(v) for k, v in value.items() if k != "generated_at"}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    return value


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from autopack_pipeline.services.analysis import WindowedEvents
    from autopack_pipeline.services.pipeline import analyse_events
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.storage.columnar import ColumnarStore

    arrays = ColumnarStore(argv[0]).event_arrays()
    analysis = analyse_events(load_settings(), WindowedEvents(arrays, None), arrays, force=True,
                              write_reports=False)
    document = {
        "samples": {"count": analysis.samples.count, "exclusions": analysis.samples.exclusions,
                    "group_counts": {"/".join(k): v for k, v in analysis.samples.group_counts.items()}},
        "metrics": analysis.metrics.as_dict(),
        "calibration": analysis.calibration.as_dict(),
        "patch": analysis.calibration.patch_payload(),
    }
    with open(argv[1], "w") as out:
        json.dump(_without_clock(document), out, indent=1, sort_keys=True, default=repr)
    print(json.dumps(analysis.timings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
