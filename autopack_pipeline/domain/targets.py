"""The product's fixed targets and tolerances: the one place each number is defined.

The guide's Tier-1 targets, the tolerance on "actual > predicted x m", and the sample thresholds of the
calibration gate. Everything that needs one of them imports it from here; settings a user may change
(``autopack_pipeline.settings``) default to these values.
"""

# Tier 1 (risk, the tuning gate): calibration is warranted only when one of these is exceeded.
UNDERESTIMATION_TARGET_PCT = 5.0
TRUNCATION_TARGET_PCT = 2.0
# Tier 2 (cost, advisory): the 90th percentile of budget/actual should stay below this.
BUDGET_WASTE_P90_TARGET = 3.0
# Tolerance on "actual > predicted x m". Autopack's analyser defaulted to 1.0 while its docs said 1.1.
UNDER_TOLERANCE = 1.1
# The share of *phases* a calibrated prediction factor may leave above the tolerance. Tier 1 counts
# calls, calibration counts phases (a phase's last attempt), and a phase that truncates counts twice:
# the truncated call is underestimated (its budget sits above 1.1x its prediction) and its retry, as
# long, is too. With U of P phases above the tolerance and R truncated calls retried, U + R of P + R
# calls are; truncation held at its target (R <= T x (P + R)) keeps the calls within target when
# U / P <= (target - T) / (1 - T): 3.06% of phases for 5% of calls at 2% truncation. (Round 4 of the
# loop benchmark, simulated seed 31: 28 of 527 phases above, 5.3%, and 11 retried truncations made
# 39 of 538 calls, 7.2%.)
FACTOR_PHASE_TARGET_PCT = (100 * (UNDERESTIMATION_TARGET_PCT - TRUNCATION_TARGET_PCT)
                           / (100 - TRUNCATION_TARGET_PCT))
# The calibration gate: enough clean samples in the window, and in the largest group.
MIN_TOTAL_SAMPLES = 20
MIN_GROUP_SAMPLES = 5
# Events whose actual output is shorter than this are not samples (the guide's minimum).
MIN_ACTUAL_TOKENS = 50
# A calibration's proposed multiplier inside this band is Autopack's "no adjustment needed".
INCREASE_ABOVE = 1.2
DECREASE_BELOW = 0.8
# Tier 2 reopens a calibration gate Tier 1 would close when a round's budget waste P90 is more than
# this many times the oracle's (the loop's bar for "the least waste the data allows").
WASTE_OVER_ORACLE_LIMIT = 1.2
