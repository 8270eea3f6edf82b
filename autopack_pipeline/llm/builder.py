"""The Builder: one phase, one estimate, one or two LLM calls, and what happened on each.

Truncation is the API's ``stop_reason == "max_tokens"`` or output reaching the ceiling sent. A
phase escalates once, to ``min(int(base * 1.25), 64000)`` where ``base`` is the largest of the
selected budget, the ceiling sent and the tokens used, as Autopack's executor does: after a truncated
attempt, or after a failed one whose output used at least 95% of the ceiling (deliverables missing
from an answer that ran out of room without being cut, reason ``utilization``).
Builder success (every deliverable came back, not truncated) and phase completion are both kept,
because Autopack conflated them (its pitfall P12).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from autopack_pipeline.domain import escalation as rule
from autopack_pipeline.domain.escalation import ESCALATION_FACTOR
from autopack_pipeline.domain.estimator import (
    TokenEstimate,
    TokenEstimator,
    extract_deliverable_path,
    select_budget,
)
from autopack_pipeline.llm.backends import LLMBackend, LLMCallError, LLMRequest
from autopack_pipeline.llm.prompt import SYSTEM_PROMPT, build_prompt, parse_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One Builder call; becomes one ``token_estimation_v2_events`` row."""

    attempt: int
    predicted_output_tokens: int
    selected_budget: int
    actual_max_tokens: int
    output_tokens: int
    input_tokens: int
    stop_reason: str | None
    truncated: bool
    success: bool
    missing_deliverables: tuple[str, ...]
    model: str
    api_retries: int


@dataclass(frozen=True)
class Escalation:
    """A decision to retry with a larger ceiling; becomes one ``token_budget_escalation_events`` row."""

    attempt_index: int
    base_value: int
    base_source: str
    retry_max_tokens: int
    selected_budget: int
    actual_max_tokens: int
    tokens_used: int
    was_truncated: bool
    output_utilization: float  # percent of the ceiling, as Autopack stores it
    reason: str  # "truncation" or "utilization"
    escalation_factor: float = ESCALATION_FACTOR


@dataclass
class PhaseResult:
    phase_id: str
    estimate: TokenEstimate
    attempts: list[Attempt] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    failure_reason: str | None = None
    duration_seconds: float = 0.0
    # The HTTP status of the API error that ended the phase (401: the key was refused), if any.
    error_status: int | None = None

    @property
    def completed(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].success

    @property
    def tokens_used(self) -> int:
        return sum(a.output_tokens + a.input_tokens for a in self.attempts)


def output_utilization(attempt: Attempt) -> float:
    """Output tokens as a percentage of the ceiling sent (Autopack stores percent, not a fraction)."""
    return float(rule.output_utilization(attempt.output_tokens, attempt.actual_max_tokens))


def escalation_for(attempt: Attempt) -> Escalation:
    """The retry ceiling after a truncated or near-ceiling attempt (the base is the largest known budget figure)."""
    figures = (attempt.selected_budget, attempt.actual_max_tokens, attempt.output_tokens)
    base = int(rule.escalation_base(*figures))
    return Escalation(
        attempt_index=attempt.attempt,
        base_value=base,
        base_source=rule.base_source(*figures),
        retry_max_tokens=int(rule.retry_max_tokens(base)),
        selected_budget=attempt.selected_budget,
        actual_max_tokens=attempt.actual_max_tokens,
        tokens_used=attempt.output_tokens,
        was_truncated=attempt.truncated,
        output_utilization=round(output_utilization(attempt), 2),
        reason="truncation" if attempt.truncated else "utilization",
    )


def _file_key(name: str) -> str:
    """The file a deliverable or an answer's block header names, so the two can be compared.

    Deliverables may be descriptions ("Create src/a.py (new)", as the estimator accepts) and models
    may write "./src/a.py"; both mean src/a.py.
    """
    path = extract_deliverable_path(name.strip().replace("\\", "/"))
    while path.startswith("./"):
        path = path[2:]
    return path


def _missing_deliverables(deliverables: list[str], text: str) -> tuple[str, ...]:
    written = {_file_key(path) for path in parse_files(text)}
    return tuple(d for d in deliverables if _file_key(d) not in written)


class Builder:
    def __init__(self, estimator: TokenEstimator, backend: LLMBackend, model: str) -> None:
        self.estimator = estimator
        self.backend = backend
        self.model = model

    def run_phase(self, phase: dict, max_builder_attempts: int = 3, first_attempt: int = 1) -> PhaseResult:
        """Drive one phase; ``phase`` has run_id, phase_id, goal, category, complexity, deliverables.

        At most ``max_builder_attempts`` calls, numbered from ``first_attempt`` (a resumed phase
        continues after the attempts it already stored, so every answer keeps its own number).
        """
        started = time.monotonic()
        deliverables = list(phase["deliverables"])
        estimate = self.estimator.estimate(
            deliverables, phase["category"], phase["complexity"], phase.get("scope_paths"), phase.get("goal", "")
        )
        selected = select_budget(estimate, phase["complexity"], self.estimator.coefficients)
        result = PhaseResult(phase_id=phase["phase_id"], estimate=estimate)
        prompt = build_prompt(phase.get("goal", ""), deliverables, phase.get("read_only_context") or [])
        max_tokens = selected
        for call in range(1, max_builder_attempts + 1):
            attempt_number = first_attempt + call - 1
            # Autopack's P4 rule: never send less than the estimator selected.
            ceiling = int(rule.ceiling_to_send(max_tokens, selected))
            request = LLMRequest(
                model=self.model,
                max_tokens=ceiling,
                system=SYSTEM_PROMPT,
                prompt=prompt,
                phase={**phase, "attempt": attempt_number, "deliverables": deliverables},
            )
            try:
                response = self.backend.complete(request)
            except LLMCallError as exc:
                result.failure_reason = f"LLM call failed after {exc.retries} retries: {exc.reason}"
                result.error_status = exc.status_code
                break
            except Exception as exc:  # noqa: BLE001 - the answers of earlier attempts must still be stored
                logger.exception("phase %s attempt %d: the backend crashed", phase["phase_id"], attempt_number)
                result.failure_reason = f"internal error: {type(exc).__name__}"
                break
            truncated = response.stop_reason == "max_tokens" or response.output_tokens >= ceiling
            missing = _missing_deliverables(deliverables, response.text)
            attempt = Attempt(
                attempt=attempt_number,
                predicted_output_tokens=estimate.estimated_tokens,
                selected_budget=selected,
                actual_max_tokens=ceiling,
                output_tokens=response.output_tokens,
                input_tokens=response.input_tokens,
                stop_reason=response.stop_reason,
                truncated=truncated,
                success=not truncated and not missing,
                missing_deliverables=missing,
                model=response.model,
                api_retries=response.retries,
            )
            result.attempts.append(attempt)
            if attempt.success:
                result.failure_reason = None
                break
            out_of_room = bool(rule.runs_out_of_room(truncated, attempt.output_tokens, ceiling))
            if out_of_room and not result.escalations and call < max_builder_attempts:
                escalation = escalation_for(attempt)
                result.escalations.append(escalation)
                max_tokens = escalation.retry_max_tokens
                continue
            result.failure_reason = (
                f"output truncated at {ceiling} tokens" if truncated else f"missing deliverables: {', '.join(missing)}"
            )
            break
        result.duration_seconds = round(time.monotonic() - started, 3)
        return result
