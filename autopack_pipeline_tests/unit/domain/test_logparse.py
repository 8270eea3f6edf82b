"""The log analyser: line formats, per-file counts, and parity with Autopack's V3 analyser by hand."""

from __future__ import annotations

import statistics

import pytest

from autopack_pipeline.domain.logparse import (
    ParsedLogs,
    analyse_logs,
    event_record,
    parse_line,
    parse_lines,
    parse_log_dir,
    source_counts,
)


def v2(predicted: int, actual: int, *, success="True", truncated="False", budget="8192", category="implementation",
       complexity="low", deliverables=1, stamp="2025-12-01 10:00:00 INFO ") -> str:
    smape = 200 * abs(predicted - actual) / (predicted + actual)
    return (f"{stamp}[TokenEstimationV2] predicted_output={predicted} actual_output={actual} smape={smape:.1f}% "
            f"selected_budget={budget} category={category} complexity={complexity} deliverables={deliverables} "
            f"success={success} stop_reason={'max_tokens' if truncated == 'True' else 'end_turn'} "
            f"truncated={truncated} model=claude-sonnet-4-5")


def v1(predicted: int, actual: int, error: float = 10.0) -> str:
    return f"[TokenEstimation] Predicted: {predicted} output tokens, Actual: {actual} output tokens, Error: {error}%"


def parsed_from(*lines: str, name: str = "run.log") -> ParsedLogs:
    parsed = ParsedLogs()
    parse_lines(lines, name, parsed)
    return parsed


def test_v2_line_fields_and_timestamp():
    record = parse_line(v2(1000, 1200, budget="None", stamp="2025-12-01T10:00:05 "), "a.log", 7)
    assert (record.format, record.predicted, record.actual, record.line_number) == ("v2", 1000, 1200, 7)
    assert record.timestamp == "2025-12-01T10:00:05"
    assert record.logged_error_pct == 18.2
    assert record.fields["selected_budget"] is None
    assert record.fields["success"] is True and record.fields["truncated"] is False
    assert record.source_file == "a.log"
    event = event_record(record)
    assert event["timestamp"].isoformat() == "2025-12-01T10:00:05+00:00"
    assert (event["predicted_output_tokens"], event["actual_output_tokens"], event["model"]) == (
        1000, 1200, "claude-sonnet-4-5")


def test_a_timestamp_that_is_not_a_time_is_left_unknown():
    record = parse_line(v2(100, 100, stamp="2025-13-01 10:00:00 "))
    assert record.timestamp == "2025-13-01T10:00:00"
    assert event_record(record)["timestamp"] is None


def test_fallback_line_is_marked_and_v1_line_read():
    fallback = parse_line("[TokenEstimationV2] predicted_output=900 actual_total=5000 selected_budget=8192 "
                          "category=docs complexity=low deliverables=1 success=True stop_reason=None truncated=False "
                          "model=m")
    assert fallback.format == "v2-fallback" and fallback.actual == 5000
    legacy = parse_line("2025-01-01 00:00:00 " + v1(500, 800, 60.0))
    assert (legacy.format, legacy.predicted, legacy.actual, legacy.logged_error_pct) == ("v1", 500, 800, 60.0)


@pytest.mark.parametrize("line", [
    "[TokenEstimationV2] predicted_output=abc actual_output=12",
    "[TokenEstimationV2] actual_output=12",
    "[TokenEstimation] Predicted: many output tokens",
])
def test_a_marked_line_that_does_not_parse_is_unreadable(line):
    assert parse_line(line) is False


def test_lines_without_a_marker_are_ignored_not_unreadable():
    parsed = parsed_from("INFO starting", "[TokenEstimationV3] something else", v2(100, 100))
    assert source_counts(parsed) == {"run.log": {"v2": 1, "v2-fallback": 0, "v1": 0, "unreadable": 0}}


def test_directory_walk_is_recursive_filtered_and_never_fatal(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "a.log").write_text(v2(100, 150) + "\n" + v1(100, 90) + "\n")
    (tmp_path / "deep" / "er" / "b.log").write_bytes(
        (v2(200, 100) + "\n").encode() + b"[TokenEstimationV2] predicted_output=\xff\xfe actual_output=1\n"
    )
    (tmp_path / "notes.txt").write_text(v2(1, 1))
    parsed = parse_log_dir(tmp_path, "*.log")
    counts = source_counts(parsed)
    assert set(counts) == {str(tmp_path / "a.log"), str(tmp_path / "deep" / "er" / "b.log")}
    assert counts[str(tmp_path / "deep" / "er" / "b.log")] == {"v2": 1, "v2-fallback": 0, "v1": 0, "unreadable": 1}
    assert parsed.unreadable_lines == 1
    assert len(parse_log_dir(tmp_path, "*.txt").records) == 1


def test_v3_rules_by_hand():
    # 4 V2 records (one truncated, three successful) and 2 V1 records, multiplier 1.0 (Autopack's strict rule).
    parsed = parsed_from(
        v2(1000, 1200),                                 # under
        v2(1000, 900),                                  # not under
        v2(1000, 8192, success="False", truncated="True", budget="8192"),  # under, truncated
        v2(2000, 2000, success="False"),                # not under, failed
        v1(500, 600),                                   # under
        v1(500, 400),                                   # not under
    )
    doc = analyse_logs(parsed, under_multiplier=1.0)
    t1 = doc["tier1"]
    assert t1["total_samples"] == 6 and t1["v2_samples"] == 4
    assert t1["underestimation_rate_pct"] == pytest.approx(100 * 3 / 6)  # N counts V1 records
    assert t1["truncation_rate_pct"] == pytest.approx(100 * 1 / 4)       # over V2 records only
    assert t1["success_rate_pct"] == pytest.approx(100 * 2 / 4)          # V1 never successful, not counted
    assert doc["needs_tuning"] is True
    # SMAPE over the 5 non-truncated records, recomputed; the logged figures' mean is kept apart.
    smapes = [200 * abs(p - a) / (p + a) for p, a in [(1000, 1200), (1000, 900), (2000, 2000), (500, 600), (500, 400)]]
    assert doc["diagnostics"]["smape_mean"] == pytest.approx(statistics.fmean(smapes))
    assert doc["diagnostics"]["logged_error_mean"] == pytest.approx(statistics.fmean([18.2, 10.5, 0.0, 10.0, 10.0]))
    assert doc["diagnostics"]["non_truncated_count"] == 5


def test_success_only_drops_every_v1_line_and_failed_v2():
    parsed = parsed_from(v2(1000, 1200), v2(1000, 900, success="False"), v1(500, 600), v1(500, 400))
    doc = analyse_logs(parsed, success_only=True, under_multiplier=1.0)
    assert doc["tier1"]["total_samples"] == 1 and doc["tier1"]["v2_samples"] == 1
    assert doc["tier1"]["success_rate_pct"] == 100.0
    assert doc["records"]["analysed"] == 1


def test_default_tolerance_is_the_database_paths_1_1():
    parsed = parsed_from(v2(1000, 1050), v2(1000, 1150))
    assert analyse_logs(parsed)["tier1"]["underestimation_rate_pct"] == 50.0
    assert analyse_logs(parsed, under_multiplier=1.0)["tier1"]["underestimation_rate_pct"] == 100.0


def test_p90_follows_autopacks_rule():
    # Waste ratio predicted/actual = 0.1 .. 1.0 (10 values): statistics.quantiles(n=10)[8] = 0.99.
    ten = parsed_from(*(v2(100 * i, 1000) for i in range(1, 11)))
    assert analyse_logs(ten)["tier2"]["waste_ratio_p90"] == pytest.approx(0.99)
    assert statistics.quantiles([i / 10 for i in range(1, 11)], n=10)[8] == pytest.approx(0.99)
    # Nine values: the maximum.
    nine = parsed_from(*(v2(100 * i, 1000) for i in range(1, 10)))
    assert analyse_logs(nine)["tier2"]["waste_ratio_p90"] == pytest.approx(0.9)
    assert analyse_logs(nine)["tier2"]["waste_ratio_median"] == pytest.approx(0.5)


def test_fallback_lines_are_left_out_unless_asked_for():
    fallback = ("[TokenEstimationV2] predicted_output=1000 actual_total=9000 selected_budget=8192 category=docs "
                "complexity=low deliverables=1 success=True stop_reason=None truncated=False model=m")
    parsed = parsed_from(v2(1000, 1000), fallback)
    out = analyse_logs(parsed)
    assert out["tier1"]["total_samples"] == 1 and out["records"]["fallback_left_out"] == 1
    included = analyse_logs(parsed, include_fallback=True)
    assert included["tier1"]["total_samples"] == 2 and included["tier1"]["v2_samples"] == 2
    assert included["tier1"]["underestimation_rate_pct"] == 50.0


def test_strata_are_over_v2_records_only():
    parsed = parsed_from(v2(1000, 1000, category="tests"), v2(1000, 3000, deliverables=7), v1(10, 20))
    strata = analyse_logs(parsed, stratify=True)["strata"]
    assert set(strata["category"]) == {"tests", "implementation"}
    assert sum(b["total_samples"] for b in strata["deliverables"].values()) == 2
    assert strata["deliverables"]["6+"]["underestimation_rate_pct"] == 100.0
