"""The prediction inputs of every event of a store, kept in the store's image (``columnar.image``) beside its
arrays, so that a later ``calibrate``, ``backtest`` or Dagster calibration maps them instead of reading the
``inputs-NNNNNN.parquet`` files and encoding them again.

That read and its pyarrow import were a tenth of a warm ``calibrate`` at a million events (0.13-0.22 s of
wall, most of it waiting for the GIL beside the analysis' other threads); the mapped codes cost a few
milliseconds. The inputs are kept as :class:`~autopack_pipeline.domain.reprediction.PredictionInputs` holds
them: the event ids and each column's codes as ``.npy`` files, each column's distinct values (deliverables
parsed, versions, doc features) in ``inputs.json``.

They live in a directory of the image, so they belong to the same state of the store and go with it: every
event's inputs in ``inputs/``; the inputs of the events of one id range only in ``inputs-<first>-<last>/`` (a
window's: ``calibrate``'s 28-day window over a long history reaches the newest parts only, whose inputs are all
it reads). They are written after the image itself (the prediction inputs are read the first time a command
asks for them), into a temporary directory renamed into place once complete: a reader sees all of them or
none, and reads the Parquet files on anything unexpected.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from autopack_pipeline.domain.reprediction import EncodedColumn, PredictionInputs
from autopack_pipeline.storage.columnar.image import map_array, remove_abandoned

logger = logging.getLogger("autopack_pipeline.storage.columnar")

INPUTS_DIRECTORY = "inputs"
_CONTENTS = "inputs.json"  # written last
_FORMAT = 1
_SPAN_DIRECTORY = re.compile(rf"{INPUTS_DIRECTORY}-(-?\d+)-(-?\d+)")

Span = tuple[int, int]  # the lowest and highest event id of the events whose inputs are kept (both included)


def inputs_directory(span: Span | None) -> str:
    """The name of the directory of the inputs of ``span``'s events (None: of every event)."""
    return INPUTS_DIRECTORY if span is None else f"{INPUTS_DIRECTORY}-{span[0]}-{span[1]}"


def read_inputs_image(image: Path, id_range: Span | None = None) -> PredictionInputs | None:
    """Prediction inputs kept in ``image`` (a complete image directory) that hold every event of ``id_range``
    (None: every event), mapped: every event's if kept, else those of a kept span covering ``id_range``; None
    when no such inputs are kept."""
    for path in _covering(image, id_range):
        inputs = _read(path)
        if inputs is not None:
            return inputs
    return None


def _covering(image: Path, id_range: Span | None) -> list[Path]:
    """The directories of ``image`` whose inputs hold every event of ``id_range``: every event's first."""
    found = [image / INPUTS_DIRECTORY]
    if id_range is not None:
        for path in image.glob(f"{INPUTS_DIRECTORY}-*"):
            span = _SPAN_DIRECTORY.fullmatch(path.name)
            if span is not None and int(span[1]) <= id_range[0] and id_range[1] <= int(span[2]):
                found.append(path)
    return found


def _read(path: Path) -> PredictionInputs | None:
    """The inputs kept in ``path``, mapped; None when there are none, or they are damaged (then removed)."""
    try:
        text = (path / _CONTENTS).read_text()
    except FileNotFoundError:
        return None
    try:
        contents = json.loads(text)
        if contents["format"] != _FORMAT:
            raise ValueError(f"format {contents['format']}")
        event_ids = map_array(path / contents["event_ids"])
        columns = {name: _column(path, entry, len(event_ids)) for name, entry in contents["columns"].items()}
        features = {name: columns[name] for name in contents["features"]}
        return PredictionInputs(event_ids, columns["deliverables"], columns["versions"], features)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("removing the damaged prediction inputs %s (%s): the Parquet files are read instead", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return None


def write_inputs_image(image: Path, inputs: PredictionInputs, span: Span | None = None) -> None:
    """Keep ``inputs`` (of every event of the image's state of the store, or of every event of ``span`` when
    given; in event id order) in ``image``. A failure (a full disk, the image removed meanwhile) is logged:
    the next command reads the Parquet files."""
    name = inputs_directory(span)
    final = image / name
    temporary = image / f".{name}.{os.getpid()}.tmp"
    remove_abandoned(image, f".{INPUTS_DIRECTORY}*.tmp")
    try:
        shutil.rmtree(temporary, ignore_errors=True)  # this process id's, left by an ended process that had it
        temporary.mkdir()
        np.save(temporary / "event_ids.npy", inputs.event_ids, allow_pickle=False)
        columns = {"deliverables": inputs.deliverables, "versions": inputs.versions, **inputs.features}
        contents = {"format": _FORMAT, "event_ids": "event_ids.npy", "features": list(inputs.features),
                    "columns": {name: _save(temporary, name, column) for name, column in columns.items()}}
        (temporary / _CONTENTS).write_text(json.dumps(contents))
        temporary.rename(final)
    except OSError as exc:
        if not (final / _CONTENTS).exists():  # else another process put the same inputs in place first
            logger.warning("could not keep the prediction inputs in %s (%s): the next command reads them again",
                           image, exc)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _save(directory: Path, name: str, column: EncodedColumn) -> dict[str, Any]:
    file = f"{name}.npy"
    np.save(directory / file, column.codes, allow_pickle=False)
    # Deliverables are tuples of strings (JSON lists); the other values are strings and booleans.
    return {"file": file, "values": list(column.values), "tuples": name == "deliverables"}


def _column(path: Path, entry: dict[str, Any], rows: int) -> EncodedColumn:
    codes = map_array(path / entry["file"])
    if len(codes) != rows:
        raise ValueError(f"{entry['file']} holds {len(codes)} entries, not {rows}")
    values = entry["values"]
    if entry["tuples"]:
        values = [tuple(value) if value is not None else None for value in values]
    return EncodedColumn(codes, tuple(values))
