"""An offline LLM that answers like Claude would, deterministically for a given seed.

Output length per phase is drawn from a heavy-tailed distribution per (category, complexity) read
from ``seeds/simulated_llm_profile.yaml``. The length a phase "wants" depends only on the seed, the
run and the phase, not on the attempt, so an escalated retry with a larger ceiling really can finish
what the first attempt could not.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import yaml
from pydantic import BaseModel

from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.llm.backends import LLMRequest, LLMResponse
from autopack_pipeline.llm.prompt import FILE_END, render_files

PROFILE_FILE = "simulated_llm_profile.yaml"
CHARS_PER_TOKEN = 4
DEGENERATE_TOKENS = 41


class SimulationProfile(BaseModel):
    version: int
    median_output_tokens: dict[str, dict[str, int]]
    extra_deliverable_fraction: float
    sigma: float
    tail_probability: float
    tail_alpha: float
    malformed_probability: float
    degenerate_probability: float
    input_tokens_per_char: float

    @classmethod
    def load(cls, seeds_dir: Path) -> SimulationProfile:
        path = seeds_dir / PROFILE_FILE
        return cls(**yaml.safe_load(path.read_text(encoding="utf-8")))

    def median_for(self, category: str, complexity: str) -> int:
        table = self.median_output_tokens.get(normalise_category(category), self.median_output_tokens["default"])
        return table.get(normalise_complexity(complexity), table["medium"])


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class SimulatedBackend:
    """Deterministic stand-in for the Messages API; the default backend, needs no key or network."""

    name = "simulated"

    def __init__(self, profile: SimulationProfile, seed: int = 42) -> None:
        self.profile = profile
        self.seed = seed

    def intended_output_tokens(self, phase: dict) -> int:
        """How long a complete answer for this phase is (before any ceiling cuts it)."""
        rng = _rng(self.seed, phase.get("run_id"), phase.get("phase_id"), "length")
        deliverables = max(1, len(phase.get("deliverables") or []))
        median = self.profile.median_for(phase.get("category", ""), phase.get("complexity", ""))
        median *= 1 + self.profile.extra_deliverable_fraction * (deliverables - 1)
        tokens = median * math.exp(rng.gauss(0.0, self.profile.sigma))
        if rng.random() < self.profile.tail_probability:
            tokens *= rng.paretovariate(self.profile.tail_alpha)
        return max(60, int(tokens))

    def complete(self, request: LLMRequest) -> LLMResponse:
        phase = request.phase
        rng = _rng(self.seed, phase.get("run_id"), phase.get("phase_id"), phase.get("attempt"), "answer")
        input_tokens = int((len(request.system) + len(request.prompt)) * self.profile.input_tokens_per_char)
        if rng.random() < self.profile.degenerate_probability:
            return LLMResponse("files: []", DEGENERATE_TOKENS, input_tokens, "end_turn", request.model)
        deliverables = list(phase.get("deliverables") or [])
        if len(deliverables) > 0 and rng.random() < self.profile.malformed_probability:
            deliverables = deliverables[:-1]  # the model forgot a file
        wanted = self.intended_output_tokens(phase)
        text = _answer_text(deliverables, wanted)
        if wanted > request.max_tokens:
            cut = _cut(text, request.max_tokens)
            return LLMResponse(cut, request.max_tokens, input_tokens, "max_tokens", request.model)
        return LLMResponse(text, wanted, input_tokens, "end_turn", request.model)


def _answer_text(deliverables: list[str], tokens: int) -> str:
    """File blocks whose total length is about ``tokens`` tokens."""
    if not deliverables:
        return "I could not produce the files."
    per_file_chars = max(40, tokens * CHARS_PER_TOKEN // len(deliverables) - 40)
    files = {}
    for path in deliverables:
        line = f"# part of {path}: generated body line\n"
        files[path] = (line * (per_file_chars // len(line) + 1))[:per_file_chars]
    return render_files(files)


def _cut(text: str, max_tokens: int) -> str:
    """What fits under the ceiling. The cut never reaches the last block's end line.

    ``_answer_text`` only approximates its token count, so for a ceiling just below the intended
    length ``max_tokens * CHARS_PER_TOKEN`` characters could hold the whole answer; a truncated
    answer must still lose the end of its last file, as a real one does.
    """
    limit = max_tokens * CHARS_PER_TOKEN
    last_end = text.rfind(FILE_END)
    if last_end >= 0:
        limit = min(limit, last_end)
    return text[:limit]
