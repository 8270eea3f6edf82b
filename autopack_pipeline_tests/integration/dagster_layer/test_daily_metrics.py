"""Per-day metrics: one partition per UTC day of the events, empty days empty, one database per series,
recomputed by declarative automation; and the rolling window the gate reads."""

import sqlite3
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pytest

from autopack_pipeline.defs.asset_graph import ALL_ASSETS
from autopack_pipeline.defs.definitions import defs
from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.defs.resources import LLMBackendResource, TelemetryDatabase
from autopack_pipeline.domain.windows import days_with_events, events_in_window, trailing_days

from .conftest import materialize_slice

TODAY = datetime.now(timezone.utc).date()


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def _day(instance, url, day: date) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS, selection="key:daily_tier_metrics", partition_key=day.isoformat(), instance=instance,
        resources={"telemetry_db": TelemetryDatabase(database_url=url), "llm": LLMBackendResource(), **event_io_resources()},
        raise_on_error=False,
    )


@pytest.fixture
def two_days(write_events):
    """Yesterday: 10 calls, 4 of them underestimated; 40 days ago: 5 calls, none underestimated."""
    yesterday, old = TODAY - timedelta(days=1), TODAY - timedelta(days=40)
    write_events([(_at(yesterday, 9 + i % 10), 1000, 2000 if i < 4 else 900) for i in range(10)], run_id="recent")
    write_events([(_at(old, 12), 1000, 900) for _ in range(5)], run_id="old")
    return yesterday, old


def test_each_day_holds_only_its_own_events_and_an_empty_day_is_empty(instance, sqlite_url, two_days):
    yesterday, old = two_days
    assert materialize_slice(instance, sqlite_url, "key:raw_events").success

    recent = _day(instance, sqlite_url, yesterday)
    assert recent.success
    tier1 = recent.output_for_node("daily_tier_metrics").tier1
    assert tier1["total_samples"] == 10 and tier1["underestimation_rate_pct"] == 40.0
    metadata = instance.get_latest_materialization_event(dg.AssetKey("daily_tier_metrics")).asset_materialization
    assert metadata.partition == yesterday.isoformat()
    figures = metadata.metadata
    assert figures["events"].value == 10
    assert figures["underestimation_rate_pct_ci95_low"].value < 40.0 < figures["underestimation_rate_pct_ci95_high"].value
    assert figures["underestimation_rate_pct_target"].value == 5.0
    assert figures["telemetry_database"].value.startswith("sqlite:///")

    assert _day(instance, sqlite_url, old).output_for_node("daily_tier_metrics").tier1[
        "total_samples"] == 5
    empty = _day(instance, sqlite_url, TODAY - timedelta(days=3))
    assert empty.success
    assert empty.output_for_node("daily_tier_metrics").tier1["total_samples"] == 0
    empty_figures = instance.get_latest_materialization_event(
        dg.AssetKey("daily_tier_metrics")).asset_materialization.metadata
    assert empty_figures["events"].value == 0 and "underestimation_rate_pct" not in empty_figures


def test_a_second_database_never_joins_the_series(instance, sqlite_url, two_days, tmp_path):
    yesterday, _ = two_days
    assert materialize_slice(instance, sqlite_url, "key:raw_events").success
    assert _day(instance, sqlite_url, yesterday).success
    first = instance.get_latest_materialization_event(dg.AssetKey("daily_tier_metrics")).asset_materialization
    other = f"sqlite:///{tmp_path / 'other.db'}"
    refused = _day(instance, other, yesterday)
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "one series never mixes two telemetry databases" in failure.step_failure_data.error.message
    # The day's figures are still the first database's.
    latest = instance.get_latest_materialization_event(dg.AssetKey("daily_tier_metrics")).asset_materialization
    assert latest.metadata["telemetry_database"].value == first.metadata["telemetry_database"].value
    assert latest.metadata["events"].value == 10



def test_the_rolling_metrics_series_refuses_a_second_database_too(instance, sqlite_url, two_days, tmp_path):
    """tier_metrics' figures are plotted across its materialisations: another database's would join them."""
    rolling = "key:raw_events or key:success_samples or key:tier_metrics"
    assert materialize_slice(instance, sqlite_url, rolling).success
    first = instance.get_latest_materialization_event(dg.AssetKey("tier_metrics")).asset_materialization
    other = tmp_path / "other.db"
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as source, sqlite3.connect(other) as copy:
        source.backup(copy)  # the same events (WAL included), another database
    refused = materialize_slice(instance, f"sqlite:///{other}", rolling)
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "the tier_metrics series holds figures of" in message and "dagster asset wipe tier_metrics" in message
    latest = instance.get_latest_materialization_event(dg.AssetKey("tier_metrics")).asset_materialization
    assert latest.metadata["telemetry_database"].value == first.metadata["telemetry_database"].value

def test_the_gate_reads_the_rolling_window_not_all_time(instance, sqlite_url, two_days):
    assert materialize_slice(instance, sqlite_url, "key:raw_events or key:success_samples or key:tier_metrics").success
    metrics = instance.get_latest_materialization_event(dg.AssetKey("tier_metrics")).asset_materialization.metadata
    assert metrics["total_samples"].value == 10  # the 5 events of 40 days ago are outside the 28 days
    assert metrics["events_last_7_days"].value == 10
    assert "events of" in metrics["window"].value
    samples = instance.get_latest_materialization_event(dg.AssetKey("success_samples")).asset_materialization.metadata
    assert samples["window"].value == metrics["window"].value


def test_all_time_when_the_window_is_off(instance, sqlite_url, two_days, monkeypatch):
    monkeypatch.setenv("AUTOPACK_METRICS_WINDOW_DAYS", "0")
    assert materialize_slice(instance, sqlite_url, "key:raw_events or key:success_samples or key:tier_metrics").success
    metrics = instance.get_latest_materialization_event(dg.AssetKey("tier_metrics")).asset_materialization.metadata
    assert metrics["total_samples"].value == 15 and metrics["window"].value == "all events"


def test_new_events_request_the_latest_days_by_automation(instance, sqlite_url, two_days):
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # raw_events was never materialised: nothing to compute from
    assert materialize_slice(instance, sqlite_url, "key:raw_events", run_config=None).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    days = after.get_requested_partitions(dg.AssetKey("daily_tier_metrics"))
    assert days == {TODAY.isoformat(), (TODAY - timedelta(days=1)).isoformat()}
    # The rolling-window assets follow the new events too; the (paid) collection never does.
    assert after.get_num_requested(dg.AssetKey("tier_metrics")) == 1
    assert after.get_num_requested(dg.AssetKey("telemetry_collection_run")) == 0


def test_windows_pick_whole_utc_days(two_days, sqlite_url):
    from autopack_pipeline.storage.snapshot import snapshot_events

    snapshot, _, _ = snapshot_events(TelemetryDatabase(database_url=sqlite_url).engine())
    arrays = snapshot.arrays()
    yesterday, old = two_days
    assert days_with_events(arrays) == [old, yesterday]
    assert len(events_in_window(arrays, trailing_days(28))) == 10
    assert len(events_in_window(arrays, trailing_days(41))) == 15
    assert len(events_in_window(arrays, None)) == 15


def test_the_window_ends_on_the_newest_event_so_an_idle_database_still_shows_its_latest_weeks(
        write_events, sqlite_url):
    from autopack_pipeline.services import analysis
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.storage.snapshot import snapshot_events

    newest, within, before = date(2025, 3, 10), date(2025, 2, 11), date(2025, 2, 10)  # 28 days: 02-11..03-10
    write_events([(_at(day, 12), 1000, 900) for day in (newest, within, before)], run_id="imported")
    snapshot, _, _ = snapshot_events(TelemetryDatabase(database_url=sqlite_url).engine())
    arrays = snapshot.arrays()

    window = analysis.analysis_window(load_settings(), arrays)
    assert window.label() == "2025-02-11..2025-03-10 (UTC)"
    assert days_with_events(events_in_window(arrays, window)) == [within, newest]
    # Without events (or when asked) the clock anchors it, as on a live database.
    assert analysis.analysis_window(load_settings(), today=TODAY).label().endswith(f"..{TODAY.isoformat()} (UTC)")
