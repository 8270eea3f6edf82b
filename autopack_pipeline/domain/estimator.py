"""Autopack's TokenEstimator and ``select_budget``, formula for formula, with numbers from data.

An estimate picks one of four models (``reference/autopack_spec.md`` section 2):

* no deliverables: the complexity default, confidence 0.5;
* DOC_SOT_UPDATE: pure-doc phases touching a ledger file such as CHANGELOG.md;
* DOC_SYNTHESIS: pure-doc phases that need API extraction, examples or research;
* the overhead model: ``int((overhead(category, complexity) + sum of marginal costs) * 1.3)``.

Every number comes from a ``CoefficientTable`` (``seeds/estimator_coefficients.yaml``). One
deliberate difference is selectable: Autopack looked PHASE_OVERHEAD up by the raw category, so
``tests`` phases missed the calibrated ``testing`` row (pitfall P7). ``category_lookup="canonical"``
(default) normalises both sides; ``category_lookup="autopack"`` reproduces the miss for parity.
How a deliverable's text is read (its path, kind, wording, the file it modifies) is in
:mod:`.deliverables`; the names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from autopack_pipeline.domain.categories import canonical_complexity, normalise_category
from autopack_pipeline.domain.coefficient_blocks import ContextQuality
from autopack_pipeline.domain.coefficient_table import CoefficientTable
from autopack_pipeline.domain.deliverables import (
    FileMeasurer,
    deliverable_kind,
    estimate_confidence,
    extract_deliverable_path,
    extract_doc_features,
    file_complexity_multiplier,
    is_doc_path,
    is_doc_synthesis,
    lower_basename,
    normalize_deliverables,
    path_exists,
)

__all__ = [
    "CoefficientTable",
    "TokenEstimate",
    "TokenEstimator",
    "complexity_default_budget",
    "context_quality",
    "deliverable_kind",
    "estimate_confidence",
    "extract_deliverable_path",
    "extract_doc_features",
    "file_complexity_multiplier",
    "is_doc_synthesis",
    "normalize_deliverables",
    "select_budget",
]

logger = logging.getLogger(__name__)

CATEGORY_LOOKUPS = ("canonical", "autopack")
NO_DELIVERABLES_CONFIDENCE = 0.5

# Autopack's raw spellings of "already a documentation category" (autopack mode), and ours.
_AUTOPACK_DOC_CATEGORIES = frozenset({"documentation", "docs", "doc_synthesis", "doc_sot_update"})
_AUTOPACK_SYNTHESIS_CATEGORIES = frozenset({"documentation", "docs"})
_CANONICAL_DOC_CATEGORIES = frozenset({"docs", "doc_synthesis", "doc_sot_update"})

_NEW_FILE_WORDS = ("create", "new", "add")
# Breakdown labels group the three code kinds under Autopack's "backend" label.
_LABEL_OF_KIND = {"python": "backend", "sql": "backend", "default": "backend"}


@dataclass(frozen=True)
class TokenEstimate:
    """One prediction. ``doc_features`` carries what the telemetry writer records for doc phases."""

    estimated_tokens: int
    deliverable_count: int
    category: str
    complexity: str
    breakdown: dict[str, int]
    confidence: float
    doc_features: dict[str, Any] = field(default_factory=dict)


# -- deliverables ------------------------------------------------------------------------------



def context_quality(
    scope_paths: Sequence[str] | None, coefficients: CoefficientTable
) -> ContextQuality:
    """How much code context the phase gets: none, some, or strong (more than 10 scope paths)."""
    table = coefficients
    if not scope_paths:
        return "none"
    return "strong" if len(scope_paths) > table.context_quality.strong_above_paths else "some"



# -- the estimator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DeliverablesRead:
    """What an estimate reads off its deliverables alone, whatever its category, complexity and scope."""

    pure_doc: bool  # every deliverable is documentation
    doc_features: dict[str, bool]  # extract_doc_features' (each estimate copies it: it adds to its own)
    sot_file: str | None  # the first deliverable naming a SOT file (lower-cased name), if any
    confidence: float  # estimate_confidence's


class TokenEstimator:
    """Predicts a phase's output tokens from its deliverables, category and complexity."""

    def __init__(
        self,
        coefficients: CoefficientTable,
        workspace: Path | None = None,
        category_lookup: str = "canonical",
        file_measurer: FileMeasurer | None = None,
        remember_deliverables: bool = False,
    ) -> None:
        """``workspace`` is where deliverable paths are looked up (the current directory at estimate
        time when None); ``file_measurer`` measures the files a phase modifies and remembers them for
        this estimator's life (a fresh one when None). ``remember_deliverables`` keeps each
        deliverable's cost (whether its file exists included) for the estimator's life: right for a
        re-prediction over stored events, which asks about the same few hundred files thousands of
        times in one pass; not for the Builder, whose phases create files between estimates.
        """
        if category_lookup not in CATEGORY_LOOKUPS:
            raise ValueError(f"category_lookup must be one of {CATEGORY_LOOKUPS}, got {category_lookup!r}")
        self.coefficients = coefficients
        self.workspace = Path(workspace) if workspace is not None else None
        self.category_lookup = category_lookup
        self.file_measurer = file_measurer if file_measurer is not None else FileMeasurer()
        self._deliverable_costs: dict[tuple[str, str, Path], tuple[str, int]] | None = (
            {} if remember_deliverables else None)
        # And what an estimate reads off a list of deliverables alone (_DeliverablesRead), by the list:
        # re-prediction estimates each stored list under several categories and complexities (1,377 runs
        # of 280 lists at a million events, ~12 ms of re-reading them).
        self._deliverables_read: dict[tuple[tuple[str, ...], str], _DeliverablesRead] | None = (
            {} if remember_deliverables else None)

    def estimate(
        self,
        deliverables: Any,
        category: str,
        complexity: str,
        scope_paths: Sequence[str] | None = None,
        task_description: str = "",
    ) -> TokenEstimate:
        """Estimate one phase (dispatch of spec section 2.2), times its group's prediction multiplier."""
        return self.calibrated(self._estimate(deliverables, category, complexity, scope_paths, task_description))

    def calibrated(self, estimate: TokenEstimate) -> TokenEstimate:
        """``estimate`` scaled by its group's ``prediction_multiplier`` (the calibration section).

        One rule for every model (overhead, doc synthesis, SOT update, no deliverables), so every
        prediction path is calibratable and a multiplier moves predictions by exactly that factor.
        Rounded half up, as ``with_overhead_multipliers`` does. Without a section entry the estimate
        is returned untouched (byte-identical to a file without the section).
        """
        setting = self.coefficients.group_setting(normalise_category(estimate.category),
                                                  canonical_complexity(estimate.complexity) or estimate.complexity)
        if setting is None or setting.prediction_multiplier == 1.0:
            return estimate
        scaled = int(math.floor(estimate.estimated_tokens * setting.prediction_multiplier + 0.5))
        return replace(estimate, estimated_tokens=scaled)

    def repredict(
        self,
        deliverables: Any,
        recorded_category: str,
        complexity: str,
        features: dict[str, Any] | None = None,
    ) -> TokenEstimate:
        """Predict a stored event again, from what the event stores.

        ``recorded_category`` is the estimate's category as the event recorded it: for
        ``doc_synthesis`` and ``doc_sot_update`` that names the model that priced the phase, so that
        model runs again (its trigger may have been the task description, which events do not keep).
        ``features`` are the stored doc features (``api_reference_required``, ``examples_required``,
        ``context_quality``...); missing ones are derived from the deliverables, context ``none``.
        """
        items = normalize_deliverables(deliverables)
        category = normalise_category(recorded_category)
        level = canonical_complexity(complexity) or str(complexity or "").strip().lower()
        if items and category in ("doc_synthesis", "doc_sot_update"):
            derived: dict[str, Any] = extract_doc_features(items)
            stored = {k: v for k, v in (features or {}).items() if v is not None}
            merged = {**derived, **{k: bool(v) for k, v in stored.items() if k in derived}}
            quality = stored.get("context_quality")
            merged["context_quality"] = quality = quality if quality in ("none", "some", "strong") else "none"
            model = self._doc_synthesis if category == "doc_synthesis" else self._doc_sot_update
            return self.calibrated(model(items, level, quality, merged))
        # The items normalised above, not normalised again (a walk of every deliverable per re-run).
        return self.calibrated(self._estimate_of(items, recorded_category, complexity, None, ""))

    def _estimate(
        self,
        deliverables: Any,
        category: str,
        complexity: str,
        scope_paths: Sequence[str] | None = None,
        task_description: str = "",
    ) -> TokenEstimate:
        return self._estimate_of(normalize_deliverables(deliverables), category, complexity, scope_paths,
                                 task_description)

    def _estimate_of(self, items: list[str], category: str, complexity: str, scope_paths: Sequence[str] | None,
                     task_description: str) -> TokenEstimate:
        """:meth:`_estimate` of deliverables normalised already (``normalize_deliverables``)."""
        canonical = self.category_lookup == "canonical"
        raw_category = "" if category is None else str(category)
        raw_complexity = "" if complexity is None else str(complexity)
        if canonical:
            category_key = normalise_category(raw_category)
            level = canonical_complexity(raw_complexity) or raw_complexity.strip().lower()
        else:
            category_key, level = raw_category, raw_complexity
        table = self.coefficients

        if not items:
            return TokenEstimate(
                estimated_tokens=table.no_deliverables_default(level),
                deliverable_count=0,
                category=category_key,
                complexity=level,
                breakdown={},
                confidence=NO_DELIVERABLES_CONFIDENCE,
            )

        read = self._read_of(items, task_description)
        pure_doc, sot_file = read.pure_doc, read.sot_file
        doc_categories = _CANONICAL_DOC_CATEGORIES if canonical else _AUTOPACK_DOC_CATEGORIES
        effective = category_key
        if pure_doc and category_key not in doc_categories:
            effective = "docs" if canonical else "documentation"

        features: dict[str, Any] = dict(read.doc_features)  # this estimate's own: it is added to
        features["context_quality"] = quality = context_quality(scope_paths, table)
        features.update(is_sot_file=False, sot_file_name=None, sot_entry_count_hint=None)

        if pure_doc and sot_file is not None:
            features.update(is_sot_file=True, sot_file_name=sot_file, sot_entry_count_hint=len(items))
            return self._doc_sot_update(items, level, quality, features)

        synthesis_categories = {"docs"} if canonical else _AUTOPACK_SYNTHESIS_CATEGORIES
        if pure_doc and effective in synthesis_categories and is_doc_synthesis(features):
            return self._doc_synthesis(items, level, quality, features)

        return self._overhead_model(items, effective, level, features, read.confidence)

    def _read_of(self, items: list[str], task_description: str) -> _DeliverablesRead:
        """:class:`_DeliverablesRead` of ``items`` (remembered with ``remember_deliverables``)."""
        if self._deliverables_read is None:
            return self._read(items, task_description)
        key = (tuple(items), task_description)
        if key not in self._deliverables_read:
            self._deliverables_read[key] = self._read(items, task_description)
        return self._deliverables_read[key]

    def _read(self, items: list[str], task_description: str) -> _DeliverablesRead:
        sot_names = set(self.coefficients.doc_sot_update.sot_file_names)
        return _DeliverablesRead(
            # A phase whose deliverables are all docs is a docs phase whatever it was filed under
            # (some phases had no category at all), so the doc models can apply.
            pure_doc=all(is_doc_path(d) for d in items),
            doc_features=extract_doc_features(items, task_description),
            sot_file=next((lower_basename(d) for d in items if lower_basename(d) in sot_names), None),
            confidence=estimate_confidence(items),
        )

    # -- models ----------------------------------------------------------------------------------

    def _doc_sot_update(self, items: list[str], level: str, quality: ContextQuality, features: dict) -> TokenEstimate:
        model = self.coefficients.doc_sot_update
        context = model.context.for_quality(quality)
        write = model.write_per_entry * max(1, len(items))
        consistency = int(model.consistency_fraction * write)
        total = int((context + write + consistency) * self.coefficients.safety_margin)
        breakdown = {
            "sot_context_reconstruction": context,
            "sot_write_entries": write,
            "sot_consistency_overhead": consistency,
        }
        return TokenEstimate(total, len(items), "doc_sot_update", level, breakdown, model.confidence, features)

    def _doc_synthesis(self, items: list[str], level: str, quality: ContextQuality, features: dict) -> TokenEstimate:
        model = self.coefficients.doc_synthesis
        writing = model.writing_per_deliverable * len(items)
        breakdown = {
            "doc_synthesis_investigate": model.investigate.for_quality(quality),
            "doc_synthesis_api_extract": model.api_extract if features["api_reference_required"] else 0,
            "doc_synthesis_examples": model.examples if features["examples_required"] else 0,
            "doc_synthesis_writing": writing,
            "doc_synthesis_coordination": (
                int(model.coordination_fraction * writing) if len(items) >= model.coordination_min_deliverables else 0
            ),
        }
        total = int(sum(breakdown.values()) * self.coefficients.safety_margin)
        return TokenEstimate(total, len(items), "doc_synthesis", level, breakdown, model.confidence, features)

    def _overhead_model(self, items: list[str], category: str, level: str, features: dict,
                        confidence: float) -> TokenEstimate:
        workspace = self.workspace if self.workspace is not None else Path.cwd()
        breakdown: dict[str, int] = {}
        marginal = 0
        for item in items:
            label, tokens = self._deliverable_cost(item, category, workspace)
            marginal += tokens
            breakdown[label] = breakdown.get(label, 0) + tokens
        overhead = self.coefficients.overhead(category, level, self.category_lookup)
        total = int((overhead + marginal) * self.coefficients.safety_margin)
        logger.debug(
            "overhead model: category=%s complexity=%s overhead=%d marginal=%d total=%d (coefficients %s)",
            category, level, overhead, marginal, total, self.coefficients.version,
        )
        return TokenEstimate(total, len(items), category, level, breakdown, confidence, features)

    def _deliverable_cost(self, item: str, category: str, workspace: Path) -> tuple[str, int]:
        """(breakdown label, marginal tokens) of one deliverable (remembered when asked to)."""
        if self._deliverable_costs is None:
            return self._measured_deliverable_cost(item, category, workspace)
        key = (item, category, workspace)
        if key not in self._deliverable_costs:
            self._deliverable_costs[key] = self._measured_deliverable_cost(item, category, workspace)
        return self._deliverable_costs[key]

    def _measured_deliverable_cost(self, item: str, category: str, workspace: Path) -> tuple[str, int]:
        path = extract_deliverable_path(item)
        target = workspace / path
        exists = path_exists(target)
        # Plain paths carry no verb, so a file missing from the workspace is a new file; without
        # this, new files were priced as modifications and systematically underestimated.
        is_new = any(word in item.lower() for word in _NEW_FILE_WORDS) or exists is False
        kind = deliverable_kind(path, category)
        costs = getattr(self.coefficients.marginal_cost, kind)
        tokens = costs.new if is_new else costs.modify
        if not is_new and exists:
            tokens = int(tokens * file_complexity_multiplier(target, self.coefficients, self.file_measurer))
        label = f"{_LABEL_OF_KIND.get(kind, kind)}_{'new' if is_new else 'modify'}"
        return label, tokens


# -- budgets --------------------------------------------------------------------------------------


def complexity_default_budget(complexity: str, coefficients: CoefficientTable) -> int:
    """Autopack's complexity default: low 8192, medium 12288, high 16384, anything else 8192.

    The key is matched exactly, as Autopack did; pass a canonical complexity.
    """
    return coefficients.no_deliverables_default(complexity)


def select_budget(estimate: TokenEstimate, complexity: str, coefficients: CoefficientTable) -> int:
    """The ``max_tokens`` to request: ``min(max(floor, int(estimate * margin)), cap)`` (spec 2.7).

    The floor is looked up by canonical category; the margin rules see the estimate's own category
    and the ``complexity`` argument exactly as given, as in Autopack. A group of the coefficient
    file's ``calibration`` section may replace the margin (``budget_margin``) and the floor
    (``budget_floor``).
    """
    table = coefficients
    rules = table.budget
    category = normalise_category(estimate.category)
    floor = table.budget_floor(category, complexity)
    margin = _rule_margin(estimate, complexity, rules)
    # A calibrated group (the file's calibration section): its margin replaces every margin rule,
    # its floor the floor table.
    setting = table.group_setting(category, canonical_complexity(complexity) or complexity)
    if setting is not None:
        margin = margin if setting.budget_margin is None else setting.budget_margin
        floor = floor if setting.budget_floor is None else setting.budget_floor
    return min(max(floor, int(estimate.estimated_tokens * margin)), rules.cap)


def _rule_margin(estimate: TokenEstimate, complexity: str, rules: Any) -> float:
    """The margin of ``select_budget``'s rules (Autopack's, spec 2.7)."""
    margin = rules.buffer_margin
    if estimate.confidence < rules.low_confidence.below:
        margin = max(margin, rules.low_confidence.margin)
    if estimate.deliverable_count >= rules.many_deliverables.at_least:
        margin = max(margin, rules.many_deliverables.margin)
    if estimate.category in rules.high_risk.categories and complexity == rules.high_risk.complexity:
        margin = max(margin, rules.high_risk.margin)
    if estimate.category in rules.doc_models.categories:
        # An assignment, not a max: these models are known to underestimate by about 2x.
        margin = rules.doc_models.margin
    return margin
