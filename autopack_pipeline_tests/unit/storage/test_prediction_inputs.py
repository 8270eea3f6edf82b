"""Every event records the coefficient version that predicted it, readable back with its inputs."""

from __future__ import annotations

from autopack_pipeline.storage.events import record_estimation_event
from autopack_pipeline.storage.prediction_inputs import read_prediction_inputs


def test_events_record_their_coefficients_version(seeded, make_event):
    assert record_estimation_event(seeded, make_event(coefficients_version="v5-step1+cal20260101T000000Z",
                                                      context_quality="some", examples_required=True,
                                                      event_uid="with-version"), respect_flag=False)
    assert record_estimation_event(seeded, make_event(event_uid="without-version"), respect_flag=False)
    inputs = read_prediction_inputs(seeded)
    assert set(inputs["coefficients_version"].tolist()) == {"v5-step1+cal20260101T000000Z", None}
    row = inputs[inputs["coefficients_version"].notna()].iloc[0]
    assert row["deliverables"] == ["src/example.py"]
    assert row["context_quality"] == "some" and bool(row["examples_required"]) is True
