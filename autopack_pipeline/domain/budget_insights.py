"""The tasks an unidentifiable budget asks for: a collect-samples insight per group whose truncation
budget the data cannot certify yet (read by task generation from a calibration section)."""

from __future__ import annotations

from collections.abc import Sequence

from autopack_pipeline.domain.budget_calibration import (
    DEFAULT_TRUNCATION_TARGET_PCT,
    GroupBudgetProposal,
    observations_for_bound,
)
from autopack_pipeline.domain.tasks import Insight


def insights_from_budget_proposals(proposals: Sequence[GroupBudgetProposal], min_samples: int) -> list[Insight]:
    """A collect-samples task per unidentifiable group: its figure needs more (untruncated) data."""
    insights = []
    for proposal in proposals:
        if proposal.status != "unidentifiable":
            continue
        subject = f"{proposal.category}/{proposal.complexity}"
        wanted = max(min_samples, observations_for_bound(DEFAULT_TRUNCATION_TARGET_PCT))
        insights.append(Insight(
            kind="sample_shortfall", subject=subject,
            title=f"Collect more samples for {subject}: its truncation budget is unidentifiable",
            detail=proposal.note, confidence=0.8, severity=5, task_kind="collect_samples", requires_approval=False,
            effort="S",
            evidence={"category": proposal.category, "complexity": proposal.complexity,
                      "observed": proposal.observations, "threshold": wanted,
                      "proposed_budget_floor": proposal.budget_floor},
            source="calibration_recommendations",
        ))
    return insights
