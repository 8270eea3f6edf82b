"""The Builder's prompt, and the file format it asks the model to answer in."""

from __future__ import annotations

import re

FILE_START = "=== FILE: {path} ==="
FILE_END = "=== END FILE ==="
_BLOCK = re.compile(r"^=== FILE: (?P<path>.+?) ===\n(?P<body>.*?)^=== END FILE ===$", re.M | re.S)

SYSTEM_PROMPT = (
    "You are the Builder of an autonomous build system. Write every requested deliverable in full. "
    "Answer only with file blocks: a line '=== FILE: <path> ===', the whole file, then a line "
    "'=== END FILE ==='. No prose outside the blocks."
)


def build_prompt(goal: str, deliverables: list[str], read_only_context: list[str]) -> str:
    """The user message for one phase: its goal, what to write, and what it may read."""
    lines = [f"Goal: {goal}", "", "Deliverables (write each one in full):"]
    lines += [f"- {path}" for path in deliverables]
    if read_only_context:
        lines += ["", "Read-only context (do not modify):"]
        lines += [f"- {path}" for path in read_only_context]
    return "\n".join(lines)


def render_files(files: dict[str, str]) -> str:
    """Files in the answer format; used by the simulated backend and by tests."""
    return "\n".join(f"{FILE_START.format(path=path)}\n{body.rstrip()}\n{FILE_END}" for path, body in files.items())


def parse_files(text: str) -> dict[str, str]:
    """Complete file blocks in an answer. A block cut off by truncation has no end line and is left out."""
    return {m.group("path").strip(): m.group("body") for m in _BLOCK.finditer(text)}
