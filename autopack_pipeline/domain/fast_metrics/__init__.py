"""The analysis over millions of events: the domain functions' results, computed with numpy.

The reference implementations (:mod:`autopack_pipeline.domain.metrics`, :mod:`~autopack_pipeline.domain.samples`,
:mod:`~autopack_pipeline.domain.gates`, :mod:`~autopack_pipeline.domain.calibration`) work on a pandas
events frame and on Python lists: ``statistics.quantiles``, ``statistics.median``, ``statistics.pstdev``,
``math.fsum`` and ``sorted`` over every value, and one boolean mask per group. On ten million events
that takes minutes and gigabytes. Here the same figures come from :class:`EventArrays` (one numpy array
per column, labels as integer codes) in O(n) passes.

Every public function equals its reference on the same data (``==`` on the documents and pydantic
models; ``autopack_pipeline_tests/domain/test_fast_paths.py`` checks this on random data).

The modules, each importing only from those listed before it:

* :mod:`.arrays`: the column containers, :class:`EventArrays`, conversion from a frame, per-row flags;
* :mod:`.exact_sums`: exact sums of floats, ``math.fsum`` means, ``statistics.pstdev``;
* :mod:`.order_statistics`: P90, medians and summaries by ``np.partition``;
* :mod:`.samples`: clean samples, attempt dedup, the clean samples' (category, complexity) groups;
* :mod:`.metrics`: tier metrics, strata and per-group Tier-1 figures;
* :mod:`.median_calibration`: the ``autopack-median`` method and the calibrations' provenance;
* :mod:`.coverage_calibration`: coverage observations and groups, the ``coverage`` method;
* :mod:`.analysis`: both methods together, the gate, and :func:`analyse`.
"""

from autopack_pipeline.domain.fast_metrics.analysis import (
    Analysis,
    analyse,
    calibration_gate_arrays,
    calibrations_arrays,
)
from autopack_pipeline.domain.fast_metrics.arrays import (
    EventArrays,
    IntColumn,
    LabelColumn,
    as_event_arrays,
    success_flags,
    truncated_flags,
    truncation_disagreements,
)
from autopack_pipeline.domain.fast_metrics.coverage_calibration import (
    CoverageGroup,
    calibrate_coverage_arrays,
    coverage_groups,
)
from autopack_pipeline.domain.fast_metrics.exact_sums import exact_group_sums, fsum_mean, population_std, sqrt_fraction
from autopack_pipeline.domain.fast_metrics.median_calibration import calibrate_autopack_median_arrays
from autopack_pipeline.domain.fast_metrics.metrics import (
    compute_metrics_arrays,
    group_tier1_arrays,
    tier_metrics_document_arrays,
)
from autopack_pipeline.domain.fast_metrics.order_statistics import _summary_and_p90, median_of, p90_of
from autopack_pipeline.domain.fast_metrics.samples import CleanSamples, SampleGroups, clean_sample_rows, sample_groups

__all__ = [
    "Analysis",
    "CleanSamples",
    "CoverageGroup",
    "EventArrays",
    "IntColumn",
    "LabelColumn",
    "SampleGroups",
    "_summary_and_p90",  # private, but the fast-path tests compare it with the reference
    "analyse",
    "as_event_arrays",
    "calibrate_autopack_median_arrays",
    "calibrate_coverage_arrays",
    "calibration_gate_arrays",
    "calibrations_arrays",
    "clean_sample_rows",
    "compute_metrics_arrays",
    "coverage_groups",
    "exact_group_sums",
    "fsum_mean",
    "group_tier1_arrays",
    "median_of",
    "p90_of",
    "population_std",
    "sample_groups",
    "sqrt_fraction",
    "success_flags",
    "tier_metrics_document_arrays",
    "truncated_flags",
    "truncation_disagreements",
]
