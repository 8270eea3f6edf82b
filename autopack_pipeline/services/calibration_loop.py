"""The calibration loop, round by round: collect -> measure -> calibrate -> backtest -> apply.

Each round collects ``runs_per_round`` runs with the coefficients in force, measures *that round's
own* events (Tier 1 with Wilson intervals, Tier 2, cost, the oracle of ``domain.oracle`` and per-group
figures with their frontier; from round 2, the previous round's oracle applied to this one, the
oracle's noise floor), then calibrates on the stored events of the recent coefficient versions
(``domain.calibration_window``), re-expressed under the coefficients in force (``calibration_apply``;
no compounding) and applies the patch to the private
seeds copy. The gate judges the round's own Tier 1, overall and per group (a group whose breach is
certain opens it): when it holds, nothing is applied and the round says so. Nothing here imports Dagster; the CLI's ``loop`` and ``benchmarks/loop.py`` call
:func:`run_loop`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from autopack_pipeline.domain.analysis import (
    budget_sent,
    compute_metrics_arrays,
    group_tier1_arrays,
    p90,
    wilson_interval,
)
from autopack_pipeline.domain.calibration_window import window_line
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.cost import cost_now
from autopack_pipeline.domain.frontier import group_frontier
from autopack_pipeline.domain.group_economics import output_price_per_row
from autopack_pipeline.domain.oracle import carried_oracle, oracle_budget_waste
from autopack_pipeline.domain.targets import TRUNCATION_TARGET_PCT, UNDER_TOLERANCE, UNDERESTIMATION_TARGET_PCT
from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.services.calibration_apply import StoredEvents, calibrate_and_apply, read_stored
from autopack_pipeline.services.refusals import Refused
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.frames import as_event_arrays, event_arrays_from_frame
from autopack_pipeline.storage.migrate import prepare_database

COEFFICIENTS_FILE = "estimator_coefficients.yaml"


def private_seeds(source: Path, work_dir: Path) -> Path:
    """A copy of ``source`` (the seeds directory) under ``work_dir``, for the loop to edit."""
    target = Path(work_dir) / "seeds"
    if target.exists():
        raise FileExistsError(f"{target} already exists: the loop starts from a fresh copy of the seeds")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.history"))
    return target


def open_fresh_database(url: str) -> Engine:
    """The loop's database, with the schema; refused when it already holds events, since the rounds'
    figures would mix with them."""
    engine = make_engine(url)
    prepare_database(engine)
    if not read_events(engine).empty:
        raise Refused(f"the loop needs a fresh database; {url.split('@')[-1]} already holds events")
    return engine


def _group_labels(frame: pd.DataFrame) -> np.ndarray:
    categories = frame["category"].map(lambda v: normalise_category(None if pd.isna(v) else v))
    complexities = frame["complexity"].map(lambda v: normalise_complexity(None if pd.isna(v) else v))
    return np.array([f"{c}/{x}" for c, x in zip(categories, complexities)], dtype=object)


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"count": int(k), "pct": 100.0 * k / n if n else 0.0, "ci": list(wilson_interval(int(k), int(n)))}


def _oracle_columns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(group label, predicted, actual, truncated) per call: what the oracle reads of a round."""
    return (_group_labels(frame), frame["predicted_output_tokens"].to_numpy(dtype=float, na_value=np.nan),
            frame["actual_output_tokens"].to_numpy(dtype=float, na_value=np.nan),
            frame["truncated"].fillna(False).to_numpy(dtype=bool))


def previous_in_force(settings: Any, stored: StoredEvents) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The previous round's ``stored`` events (as the loop read them for that round) with their
    predictions re-expressed under the coefficients in force now, as ``calibrate`` re-expresses
    history (``reprediction.arrays_in_force``), and how: the version and the count of events per way."""
    from autopack_pipeline.domain.coefficients import load_coefficient_history
    from autopack_pipeline.domain.reprediction import arrays_in_force
    from autopack_pipeline.services.seed_files import load_coefficients_for

    table = load_coefficients_for(settings)
    history = load_coefficient_history(settings.seeds_dir / COEFFICIENTS_FILE)
    arrays, ways = arrays_in_force(stored.arrays(), stored.inputs, table, history)
    frame = stored.events.copy()
    # The arrays keep the frame's row order (event_arrays_from_frame), so the column lines up.
    frame["predicted_output_tokens"] = pd.array(np.where(arrays.predicted.notna(), arrays.predicted.values, None),
                                                dtype="Int64")
    return frame, {"under": table.version, "events": {way: n for way, n in ways.items() if n}}


def measure_round(frame: pd.DataFrame, prices: Any, under_multiplier: float = UNDER_TOLERANCE,
                  previous: pd.DataFrame | None = None) -> dict[str, Any]:
    """Tier 1, Tier 2, cost, oracle and per-group figures of one round's events (an events frame).

    ``previous``: the previous round's events, predictions in this round's coefficients
    (:func:`previous_in_force`): its oracle applied to this round is reported as the oracle
    comparison's noise floor (``previous_oracle``; None without it)."""
    arrays = event_arrays_from_frame(frame)
    document = compute_metrics_arrays(arrays, under_multiplier=under_multiplier)
    tier1, tier2 = document["tier1"], document["tier2"]
    labels, predicted, actual, truncated = _oracle_columns(frame)
    sent = np.nan_to_num(budget_sent(arrays), nan=0.0)
    known = np.isfinite(actual)
    cost = cost_now(actual[known], sent[known], truncated[known], output_price_per_row(arrays, prices)[known])
    oracle = oracle_budget_waste(labels, predicted, actual, truncated)
    carried = None if previous is None else carried_oracle(_oracle_columns(previous), labels, predicted, actual,
                                                           truncated, oracle)
    ours = tier2.get("budget_waste_p90")
    groups = []
    for label in sorted(set(labels.tolist())):
        rows = labels == label
        p, a, t = predicted[rows], actual[rows], truncated[rows]
        usable = (p > 0) & np.isfinite(a)
        n = int(rows.sum())
        under = int(((a > p * under_multiplier) & usable).sum())
        cut = int(t.sum())
        clean = usable & ~t
        frontier = group_frontier(a[clean] / p[clean], int((usable & t).sum()))
        with np.errstate(divide="ignore", invalid="ignore"):
            waste = (sent[rows] / a)[usable & (sent[rows] > 0)]
        meets = 100.0 * under / n <= UNDERESTIMATION_TARGET_PCT and 100.0 * cut / n <= TRUNCATION_TARGET_PCT
        oracle_group = oracle.groups.get(label)
        groups.append({
            "group": label, "events": n, "underestimation": _rate(under, n), "truncation": _rate(cut, n),
            "meets_tier1": meets, "budget_waste_p90": p90(waste.tolist()),
            "oracle_multiplier": oracle_group.multiplier if oracle_group else None,
            "oracle_censored": bool(oracle_group and oracle_group.censored),
            "previous_oracle_multiplier": _carried(carried, label, "multiplier"),
            "previous_oracle_censored": bool(_carried(carried, label, "censored")),
            "frontier_reachable": frontier.reachable,
            "frontier_tier2_holds": frontier.tier2_holds,
            "why": None if meets else _why(frontier),
        })
    return {
        "events": int(len(frame)),
        "tier1": {"underestimation": _rate(tier1["underestimated_count"], tier1["underestimation_samples"]),
                  "truncation": _rate(tier1["truncated_count"], tier1["total_samples"]),
                  "meets": (tier1["underestimation_rate_pct"] <= UNDERESTIMATION_TARGET_PCT
                            and tier1["truncation_rate_pct"] <= TRUNCATION_TARGET_PCT)},
        "tier2": {"budget_waste_p90": ours},
        "cost": {"billed_output_tokens": cost.billed_output_tokens, "dollars": cost.dollars,
                 "reserved_output_tokens": cost.reserved_output_tokens,
                 "capacity_utilisation": cost.utilisation},
        "oracle": {"budget_waste_p90": oracle.budget_waste_p90,
                   "ratio": (ours / oracle.budget_waste_p90) if ours and oracle.budget_waste_p90 else None,
                   "censored_groups": _censored(oracle.groups)},
        "previous_oracle": None if carried is None else {
            "budget_waste_p90": carried.budget_waste_p90, "ratio": carried.ratio, "calls": carried.budgeted,
            "without_multiplier": carried.without_multiplier,
            "over_budget": _rate(carried.over_budget, carried.budgeted),
            "censored_groups": _censored(carried.groups)},
        "groups": groups,
    }


def _carried(carried: Any, label: str, field: str) -> Any:
    group = None if carried is None else carried.groups.get(label)
    return None if group is None else getattr(group, field)


def _censored(groups: dict[object, Any]) -> list[str]:
    """The groups whose oracle multiplier is only a lower bound (its rank fell on a truncated call)."""
    return sorted(str(label) for label, group in groups.items() if group.censored)


def _why(frontier: Any) -> str:
    """Why a group missed Tier 1 this round, from the frontier of its own figures."""
    if not frontier.reachable:
        return (f"out of reach on this round's spread: {frontier.censored} of {frontier.observations} calls truncated "
                "(count above every budget)")
    if not frontier.certified:
        return (f"reachable at x{frontier.multiplier:.2f} margin {frontier.margin:.2f}, but {frontier.observations} "
                f"calls cannot certify it (~{frontier.observations_needed} needed): sampling noise")
    return f"reachable at x{frontier.multiplier:.2f} margin {frontier.margin:.2f}"


@dataclass
class LoopOptions:
    rounds: int
    runs_per_round: int
    world: str = "simulated"
    concurrency: int = 4
    template_phases_per_group: int | None = None
    min_samples: int = 5
    confidence_threshold: float = 0.7
    window_versions: int | None = None  # None: the setting (AUTOPACK_CALIBRATION_WINDOW_VERSIONS)


def _calibrate_round(engine: Engine, settings: Any, round_tier1: dict[str, Any],
                     round_group_tier1: dict[tuple[str, str], dict[str, Any]], options: LoopOptions,
                     waste_over_oracle: float | None = None) -> dict[str, Any]:
    """Calibrate on the recent window (in force), gate on this round's own Tier 1 (overall and per group)
    and its budget waste against the oracle's (Tier 2 reopens the gate; so does a drift of the
    estimator's error since the previous version), apply what it proposes."""
    # Two rounds within one second still get versions of their own: coefficients.calibrated_version_name.
    step = calibrate_and_apply(engine, settings, write=True, tier1=round_tier1,
                               group_tier1=round_group_tier1, waste_over_oracle=waste_over_oracle,
                               min_samples=options.min_samples, confidence_threshold=options.confidence_threshold,
                               window_versions=options.window_versions, reopen_on_drift=True)
    outcome, application = step["outcome"], step["application"]
    if not outcome.gate.open:
        return {"status": "gate_closed", "message": outcome.gate.summary(), "applied_version": None}
    if application is None:
        return {"status": "nothing_to_apply", "message": "the patch proposes no change", "applied_version": None}
    backtest = application.backtest or {}
    section = outcome.calibration_section or {}
    return {
        "status": "applied", "message": outcome.gate.summary(), "applied_version": application.new.version,
        "groups_set": len(application.patch.settings), "window": outcome.window,
        "budgets": [{"group": f"{g['category']}/{g['complexity']}", "status": g["status"],
                     "observations": g["observations"], "censored": g["censored"], "margin": g["budget_margin"],
                     "factor": g["proposed_factor"]} for g in section.get("groups", [])],
        "backtest": {side: backtest.get(side) for side in ("old", "new")} if backtest else None,
    }


def run_loop(engine: Engine, settings: Any, backend_for_round: Callable[[int], LLMBackend], options: LoopOptions,
             *, before_round: Callable[[int], None] | None = None,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``options.rounds`` rounds on ``engine`` with the seeds of ``settings.seeds_dir`` (edited in place:
    pass a private copy). Returns one document per round (see :func:`measure_round`), in order."""
    from autopack_pipeline.services.collecting import collect
    from autopack_pipeline.services.seed_files import load_coefficients_for, load_prices_for

    prices = load_prices_for(settings)
    rounds = []
    previous_stored: StoredEvents | None = None
    for number in range(1, options.rounds + 1):
        if before_round is not None:
            before_round(number)
        version = load_coefficients_for(settings).version
        backend = backend_for_round(number)
        run_ids, failures = [], 0
        for run in range(1, options.runs_per_round + 1):
            run_id = f"loop-{options.world}-r{number}-{run}"
            extra = ({} if options.template_phases_per_group is None
                     else {"template_phases_per_group": options.template_phases_per_group})
            summary = collect(engine, settings, backend, run_id=run_id, concurrency=options.concurrency,
                                        **extra)
            failures += len(summary.problems())
            run_ids.append(run_id)
        stored = read_stored(engine, run_ids)
        previous, re_expressed = (previous_in_force(settings, previous_stored) if previous_stored is not None
                                  else (None, None))
        previous_stored = stored
        measured = measure_round(stored.events, prices, previous=previous)
        if re_expressed is not None:
            measured["previous_oracle"] |= {"from_round": number - 1, "re_expressed": re_expressed}
        versions = stored.inputs.versions_present()
        round_arrays = as_event_arrays(stored.events)
        round_tier1 = compute_metrics_arrays(round_arrays)["tier1"]
        document = {"round": number, "world": options.world, "run_ids": run_ids, "coefficients_version": version,
                    "event_coefficients_versions": versions, "collection_problems": failures, **measured,
                    "calibration": _calibrate_round(engine, settings, round_tier1, group_tier1_arrays(round_arrays),
                                                    options, measured["oracle"]["ratio"])}
        rounds.append(document)
        if on_round is not None:
            on_round(document)
    return rounds


# -- text -----------------------------------------------------------------------------------------


def _pct(rate: dict[str, Any]) -> str:
    low, high = rate["ci"]
    return f"{rate['pct']:.1f}% [{low:.1f}-{high:.1f}]"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def round_lines(document: dict[str, Any], *, groups: bool = True) -> list[str]:
    """What a person reads for one round."""
    t1, cost, oracle = document["tier1"], document["cost"], document["oracle"]
    use = cost["capacity_utilisation"]
    lines = [
        f"Round {document['round']} ({document['world']}, {document['events']} calls, coefficients "
        f"{document['coefficients_version']}):",
        f"  Tier 1: underestimation {_pct(t1['underestimation'])}, truncation {_pct(t1['truncation'])} -> "
        + ("targets met" if t1["meets"] else "targets missed"),
        f"  Tier 2: budget waste P90 {_x(document['tier2']['budget_waste_p90'])}; oracle "
        f"{_x(oracle['budget_waste_p90'])}; ratio {_x(oracle['ratio'])}",
        *_noise_floor_line(document.get("previous_oracle")),
        f"  Cost: ${cost['dollars']:.2f} for {cost['billed_output_tokens']:,.0f} billed output tokens; reserved "
        f"{cost['reserved_output_tokens']:,.0f} output tokens (used {'n/a' if use is None else f'{100 * use:.0f}%'})",
    ]
    if groups:
        for g in document["groups"]:
            state = "meets Tier 1" if g["meets_tier1"] else f"misses Tier 1: {g['why']}"
            lines.append(f"    {g['group']}: {g['events']} calls, under {g['underestimation']['pct']:.1f}%, "
                         f"trunc {g['truncation']['pct']:.1f}%, waste P90 {_x(g['budget_waste_p90'])}; {state}")
    calibration = document["calibration"]
    if calibration["status"] == "applied":
        lines.append(f"  Calibration: applied {calibration['applied_version']} ({calibration['groups_set']} groups)")
        if calibration.get("window"):
            lines.append("  " + window_line(calibration["window"]))
        if calibration.get("budgets") and groups:
            lines.append("  Budgets set: " + "; ".join(
                f"{b['group']} {b['status']} ({b['censored']} of {b['observations']} cut) factor x{b['factor']:.2f} "
                f"margin {'rules' if b['margin'] is None else format(b['margin'], '.3f')}" for b in calibration["budgets"]))
    elif calibration["status"] == "gate_closed":
        lines.append(f"  Calibration: nothing applied: {calibration['message']}")
    else:
        lines.append(f"  Calibration: nothing applied: {calibration['message']}")
    return lines


def _noise_floor_line(carried: dict[str, Any] | None) -> list[str]:
    if carried is None:
        return []
    missing = carried["without_multiplier"]
    return [f"  Noise floor: the previous round's oracle applied to this round: budget waste P90 "
            f"{_x(carried['budget_waste_p90'])}, {_x(carried['ratio'])} this round's oracle; over budget "
            f"{_pct(carried['over_budget'])} of {carried['calls']} calls"
            + (f" ({missing} calls in groups the previous round did not have)" if missing else "")
            + (f"; {len(carried['censored_groups'])} group(s) at a lower bound (rank on a truncated call): "
               + ", ".join(carried["censored_groups"]) if carried["censored_groups"] else "")]


TABLE_COLUMNS = ("round", "calls", "under %", "trunc %", "waste P90", "oracle P90", "ratio", "prev-oracle P90",
                 "prev ratio", "$ billed", "reserved")


def table_lines(rounds: list[dict[str, Any]]) -> list[str]:
    """The per-round table (one line per round)."""
    rows = [TABLE_COLUMNS]
    for d in rounds:
        rows.append((
            str(d["round"]), str(d["events"]), f"{d['tier1']['underestimation']['pct']:.1f}",
            f"{d['tier1']['truncation']['pct']:.1f}", _x(d["tier2"]["budget_waste_p90"]),
            _x(d["oracle"]["budget_waste_p90"]), _x(d["oracle"]["ratio"]), *_carried_cells(d.get("previous_oracle")),
            f"{d['cost']['dollars']:.2f}",
            f"{d['cost']['reserved_output_tokens'] / 1e6:.2f}M"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]


def _carried_cells(carried: dict[str, Any] | None) -> tuple[str, str]:
    """The table's noise-floor cells: "-" in round 1, which has no previous round."""
    return ("-", "-") if carried is None else (_x(carried["budget_waste_p90"]), _x(carried["ratio"]))
