"""What each stored event keeps about its prediction: deliverables, coefficient version, doc features.

The events frame (``read_events``) leaves these out because the metrics never need them; the
backtest and the calibration's re-prediction do (``domain.reprediction``). Columns a database does
not have (an Autopack database has no ``coefficients_version``) come back as nulls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine

from autopack_pipeline.domain.reprediction import FEATURE_COLUMNS, PredictionInputs
from autopack_pipeline.storage.models import TokenEstimationV2Event

_EVENTS = TokenEstimationV2Event.__table__
INPUT_COLUMNS = ("coefficients_version", *FEATURE_COLUMNS)


def _deliverables(text: str | None) -> list[str]:
    """``deliverables_json`` as a list of strings; unparseable JSON counts as no deliverables."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def read_prediction_inputs(engine: Engine, event_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """A frame indexed by ``event_id``: ``deliverables`` (lists) and :data:`INPUT_COLUMNS`."""
    columns = ["deliverables", *INPUT_COLUMNS]
    if not inspect(engine).has_table(_EVENTS.name):
        return pd.DataFrame(columns=columns, index=pd.Index([], name="event_id"))
    present = {column["name"] for column in inspect(engine).get_columns(_EVENTS.name)}
    chosen = [name for name in INPUT_COLUMNS if name in present]
    statement = select(_EVENTS.c.event_id, _EVENTS.c.deliverables_json, *(_EVENTS.c[name] for name in chosen))
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    frame = pd.DataFrame(rows, columns=["event_id", "deliverables_json", *chosen]).astype(object)
    if event_ids is not None:
        frame = frame[frame["event_id"].isin({int(i) for i in event_ids})]
    # Each distinct deliverables text is parsed once (phases of one run, retries and templates repeat them).
    codes, texts = pd.factorize(frame["deliverables_json"], use_na_sentinel=True)
    parsed = [_deliverables(text) for text in texts]
    frame["deliverables"] = [parsed[c] if c >= 0 else [] for c in codes]
    for name in INPUT_COLUMNS:
        if name not in frame:
            frame[name] = None
    frame.index = pd.Index(frame.pop("event_id").astype("int64"), name="event_id")
    return frame[columns].astype(object)


def prediction_inputs_of(frame: pd.DataFrame) -> PredictionInputs:
    """A :func:`read_prediction_inputs` frame (indexed by ``event_id``) as the domain's
    :class:`PredictionInputs`; feature columns the frame lacks are left out, missing values are None."""
    def column(name: str) -> list:
        return [None if value is None or (isinstance(value, float) and value != value) else value
                for value in frame[name].to_numpy(dtype=object)]

    versions = column("coefficients_version") if "coefficients_version" in frame else [None] * len(frame)
    return PredictionInputs.from_rows(
        frame.index.to_numpy(dtype="int64"), list(frame["deliverables"].to_numpy(dtype=object)),
        [v if isinstance(v, str) else None for v in versions],
        {name: column(name) for name in FEATURE_COLUMNS if name in frame.columns},
    )
