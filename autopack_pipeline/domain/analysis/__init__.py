"""The analysis: clean samples, tier metrics, the gate and both calibration methods, with numpy.

The one implementation of each analysis rule. It works on :class:`EventArrays` (one numpy array per
column, labels as integer codes) in O(n) passes, so ten million events take seconds; it imports no
pandas. An events frame becomes arrays in the storage layer (``autopack_pipeline.storage.frames``).
The tests keep the first, pandas implementation as an oracle (``autopack_pipeline_tests/oracle``) and
compare the two on random data (``autopack_pipeline_tests/unit/domain/test_analysis_against_oracle.py``).

The modules, each importing only from those listed before it:

* :mod:`.rates`: rates, Wilson intervals, the Tier-1 block and the tuning decision;
* :mod:`.calibration_results`: the result models every calibration method returns;
* :mod:`.coverage_rules`: the coverage method's definitions (bound, weight, borrowing, a group's figures);
* :mod:`.gate`: the calibration gate's rule and its certain per-group breaches;
* :mod:`.arrays`: the column containers, :class:`EventArrays`, per-row flags (success, truncation, budget);
* :mod:`.order_statistics`: P90, medians and summaries by ``np.partition``;
* :mod:`.samples`: clean samples, attempt dedup, the clean samples' (category, complexity) groups;
* :mod:`.metrics`: tier metrics, strata and per-group Tier-1 figures;
* :mod:`.median_calibration`: the ``autopack-median`` method and the calibrations' provenance;
* :mod:`.coverage_calibration`: coverage observations and groups, the ``coverage`` method;
* :mod:`.calibrations`: both methods together and the gate over the arrays (the chain of samples,
  metrics, gate and calibrations is ``services.pipeline``'s).
"""

from autopack_pipeline.domain.analysis.arrays import (
    EventArrays,
    IntColumn,
    LabelColumn,
    budget_sent,
    success_flags,
    truncated_flags,
    truncation_disagreements,
)
from autopack_pipeline.domain.analysis.calibration_results import (
    AUTOPACK_MEDIAN,
    BelowThresholdGroup,
    CalibrationResult,
    GroupCalibration,
    Provenance,
)
from autopack_pipeline.domain.analysis.calibrations import calibration_gate_arrays, calibrations_arrays
from autopack_pipeline.domain.analysis.coverage_calibration import (
    CoverageGroup,
    calibrate_coverage_arrays,
    coverage_groups,
)
from autopack_pipeline.domain.analysis.coverage_rules import CALIBRATION_METHODS, COVERAGE
from autopack_pipeline.domain.analysis.gate import GateDecision, certain_group_breaches, decide_gate, largest_group
from autopack_pipeline.domain.analysis.median_calibration import calibrate_autopack_median_arrays
from autopack_pipeline.domain.analysis.metrics import (
    compute_metrics_arrays,
    group_tier1_arrays,
    tier1_arrays,
    tier_metrics_document_arrays,
    tier_metrics_with_group_tier1_arrays,
)
from autopack_pipeline.domain.analysis.order_statistics import _summary_and_p90, median_of, p90, p90_of
from autopack_pipeline.domain.analysis.rates import percent, wilson_interval
from autopack_pipeline.domain.analysis.samples import CleanSamples, SampleGroups, clean_sample_rows, sample_groups

__all__ = [
    "AUTOPACK_MEDIAN",
    "BelowThresholdGroup",
    "CALIBRATION_METHODS",
    "COVERAGE",
    "CalibrationResult",
    "CleanSamples",
    "CoverageGroup",
    "EventArrays",
    "GateDecision",
    "GroupCalibration",
    "IntColumn",
    "LabelColumn",
    "Provenance",
    "SampleGroups",
    "_summary_and_p90",  # private, but the fast-path tests compare it with the reference
    "budget_sent",
    "calibrate_autopack_median_arrays",
    "calibrate_coverage_arrays",
    "calibration_gate_arrays",
    "calibrations_arrays",
    "certain_group_breaches",
    "clean_sample_rows",
    "compute_metrics_arrays",
    "coverage_groups",
    "decide_gate",
    "group_tier1_arrays",
    "largest_group",
    "median_of",
    "p90",
    "p90_of",
    "percent",
    "sample_groups",
    "success_flags",
    "tier1_arrays",
    "tier_metrics_document_arrays",
    "tier_metrics_with_group_tier1_arrays",
    "truncated_flags",
    "truncation_disagreements",
    "wilson_interval",
]
