"""``services.pipeline.drift_report``: the drift check's arrays on small pages, numpy's setting put back after."""

from numpy._core.multiarray import _get_madvise_hugepage

from autopack_pipeline.domain import drift
from autopack_pipeline.services.pipeline import drift_report
from autopack_pipeline.storage.frames import as_event_arrays
from autopack_pipeline_tests.unit.dagster_layer.test_drift import NOW, synthetic_events


def test_drift_is_computed_on_small_pages_and_the_setting_is_restored(monkeypatch):
    seen = []
    detect = drift.detect_drift

    def recorded(arrays, now):
        seen.append(_get_madvise_hugepage())
        return detect(arrays, now=now)

    monkeypatch.setattr(drift, "detect_drift", recorded)
    before = _get_madvise_hugepage()
    report = drift_report(as_event_arrays(synthetic_events(shift=0.5)), now=NOW)
    assert seen == [False]  # huge pages asked for nowhere while the drift's arrays are made
    assert _get_madvise_hugepage() == before
    assert [g.subject for g in report.drifted()] == ["implementation/medium"]
