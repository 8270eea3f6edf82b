"""A world of its own for the calibration loop, served through the local Messages server.

Output lengths depend on what the deliverables *are* (file kinds and the words of their paths,
hashed deterministically), never on Autopack's category labels; the noise is heavy-tailed (a
log-t: Student's t with 3 degrees of freedom on the log scale); and from ``drift_round`` on every
length is multiplied by ``drift``. A drawn length over the request's ``max_tokens`` comes back as a
real truncated answer (stop_reason ``max_tokens``, output_tokens = max_tokens). An escalated retry of
a truncated call (same prompt, larger ``max_tokens``) wants the same length, as a real model would
roughly; any other request draws afresh. Each fresh draw is seeded by the world's seed, the prompt and
how many fresh draws that prompt had before, not taken from one generator in the order the server's
threads happen to ask: the same seed gives the same lengths run after run (a phase's attempts come one
after another, and no two phases of a run share a prompt). Test and benchmark infrastructure,
independent of the product.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading

from autopack_pipeline_tests.support.messages_server import Answer, Truncated

# Tokens per file by kind (the extension), before the path words' factor.
KIND_TOKENS = {".py": 2600, ".md": 1500, ".yaml": 700, ".yml": 700, ".json": 600, ".toml": 400, ".txt": 500}
DEFAULT_KIND_TOKENS = 1200
_PATH_LINE = re.compile(r"^- (?P<path>\S+)", re.M)


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def file_tokens(path: str) -> float:
    """A file's typical length: its kind's, times a factor from its path words in [0.6, 1.9)."""
    kind = next((tokens for ext, tokens in KIND_TOKENS.items() if path.endswith(ext)), DEFAULT_KIND_TOKENS)
    words = [w for w in re.split(r"[/_.\-\s()]+", path.lower()) if w]
    factor = math.exp(sum(math.log(0.6 + 1.3 * _unit("word", w)) for w in words) / max(1, len(words)) ** 0.5)
    return kind * min(4.0, max(0.25, factor))


def deliverables_of(prompt: str) -> list[str]:
    part = prompt.split("Deliverables", 1)[-1].split("Read-only context", 1)[0]
    return [m.group("path") for m in _PATH_LINE.finditer(part)]


class LengthWorld:
    """``responder`` answers one Messages request body; ``round`` is set by the loop's ``before_round``."""

    def __init__(self, seed: int = 7, *, sigma: float = 0.3, df: int = 3, drift: float = 1.3,
                 drift_round: int = 3) -> None:
        self.seed = seed
        self.sigma, self.df, self.drift, self.drift_round = sigma, df, drift, drift_round
        self.round = 1
        self._last: dict[str, tuple[int, int]] = {}  # prompt -> (length wanted, max_tokens of the truncated call)
        self._draws: dict[str, int] = {}  # prompt -> fresh draws so far
        self._lock = threading.Lock()

    def set_round(self, number: int) -> None:
        self.round = number

    def _log_t(self, rng: random.Random) -> float:
        # Student's t: a normal over the root of a scaled chi-square with df degrees of freedom.
        chi2 = sum(rng.gauss(0, 1) ** 2 for _ in range(self.df))
        return rng.gauss(0, 1) / math.sqrt(chi2 / self.df)

    def wanted(self, prompt: str, max_tokens: int) -> int:
        with self._lock:
            previous = self._last.pop(prompt, None)
            if previous is not None and max_tokens > previous[1]:
                return previous[0]  # the escalated retry of a truncated call
            draw = self._draws.get(prompt, 0)
            self._draws[prompt] = draw + 1
        rng = random.Random(int(_unit("draw", self.seed, prompt, draw) * 2**64))
        files = deliverables_of(prompt) or ["answer.txt"]
        typical = sum(file_tokens(p) for p in files) * (self.drift if self.round >= self.drift_round else 1.0)
        return max(80, int(typical * math.exp(self.sigma * self._log_t(rng))))

    def responder(self, body: dict):
        prompt = body["messages"][-1]["content"]
        prompt = prompt if isinstance(prompt, str) else " ".join(part.get("text", "") for part in prompt)
        max_tokens = int(body["max_tokens"])
        length = self.wanted(prompt, max_tokens)
        files = deliverables_of(prompt) or ["answer.txt"]
        text = "\n".join(f"=== FILE: {p} ===\n{'x = 1  # generated line' * 1}\n=== END FILE ===" for p in files)
        if length > max_tokens:
            with self._lock:
                self._last[prompt] = (length, max_tokens)
            return Truncated(text)
        return Answer(text, output_tokens=length)
