"""`analyze-logs` as a user runs it: report sections, per-file counts, exit codes."""

from __future__ import annotations

import json

from autopack_pipeline_tests.support.calibration_cli_support import environment, run

V2 = ("2025-12-01 10:00:00 INFO [TokenEstimationV2] predicted_output={p} actual_output={a} smape=1.0% "
      "selected_budget=8192 category=implementation complexity=low deliverables=1 success={s} "
      "stop_reason=end_turn truncated={t} model=claude-sonnet-4-5")
V1 = "[TokenEstimation] Predicted: {p} output tokens, Actual: {a} output tokens, Error: 5.0%"


def write_logs(root):
    (root / "run-a").mkdir(parents=True)
    (root / "run-a" / "builder.log").write_text("\n".join([
        V2.format(p=1000, a=1500, s="True", t="False"),
        V2.format(p=1000, a=900, s="True", t="False"),
        V2.format(p=1000, a=8192, s="False", t="True"),
        "[TokenEstimationV2] predicted_output=oops",
    ]) + "\n")
    (root / "legacy.log").write_text(V1.format(p=500, a=400) + "\nunrelated line\n")


def test_report_to_stdout_has_the_v3_sections_and_per_file_counts(tmp_path):
    write_logs(tmp_path / "logs")
    result = run("analyze-logs", "--log-dir", str(tmp_path / "logs"), "--stratify", cwd=tmp_path,
                 env=environment(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headings = [line for line in out.splitlines() if line.startswith("## ")]
    assert headings == ["## Configuration", "## Tier 1: risk (tuning gates)", "## Tier 2: cost (advisory)",
                        "## Diagnostics", "## Tuning decision", "## Stratified analysis (V2 records)",
                        "## Next steps", "## Data sources"]
    assert "Truncation rate: 33.3%" in out and "over 3 V2 records" in out
    assert "Underestimation rate: 50.0%" in out  # 1500 and 8192 of 4 records exceed 1.1 x 1000
    assert f"| {tmp_path / 'logs' / 'run-a' / 'builder.log'} | 3 | 0 | 0 | 1 |" in out
    assert f"| {tmp_path / 'logs' / 'legacy.log'} | 0 | 1 | 0 | 0 |" in out
    assert "**TUNING NEEDED**" in out


def test_output_file_and_json(tmp_path):
    write_logs(tmp_path / "logs")
    env = environment(tmp_path)
    target = tmp_path / "out" / "report.md"
    result = run("analyze-logs", "--log-dir", str(tmp_path / "logs"), "--output", str(target), "--json",
                 "--success-only", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("# Token Estimation Telemetry Analysis")
    document = json.loads(result.stdout)
    assert document["tier1"]["total_samples"] == 2 and document["tier1"]["v2_samples"] == 2
    assert document["records"]["found"] == {"v2": 3, "v2-fallback": 0, "v1": 1}
    assert document["records"]["unreadable_lines"] == 1
    assert set(document["sources"]) == {str(tmp_path / "logs" / "run-a" / "builder.log"),
                                        str(tmp_path / "logs" / "legacy.log")}
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_no_records_exits_1_and_a_missing_directory_exits_2(tmp_path):
    env = environment(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.log").write_text("nothing to see\n")
    none = run("analyze-logs", "--log-dir", str(tmp_path / "empty"), cwd=tmp_path, env=env)
    assert none.returncode == 1 and "no [TokenEstimationV2]" in none.stderr
    missing = run("analyze-logs", "--log-dir", str(tmp_path / "nope"), cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def test_success_only_with_only_v1_lines_exits_1(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "old.log").write_text(V1.format(p=500, a=600) + "\n")
    result = run("analyze-logs", "--log-dir", str(tmp_path / "logs"), "--success-only", cwd=tmp_path,
                 env=environment(tmp_path))
    assert result.returncode == 1 and "none is left" in result.stderr
