"""A phase's deliverables read the way Autopack's TokenEstimator reads them.

The text of a deliverable names a file (``extract_deliverable_path``), that file's kind picks a row
of the marginal-cost table (``deliverable_kind``), the wording says how specific the list is
(``estimate_confidence``) and whether a documentation phase needs synthesis
(``extract_doc_features``); an existing file's size and nesting scale a modification's cost
(``file_complexity_multiplier``, with the files measured by a ``FileMeasurer`` its caller owns). :mod:`.estimator` combines these into an estimate.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Callable, NamedTuple, Sequence

from autopack_pipeline.domain.coefficient_table import CoefficientTable

logger = logging.getLogger(__name__)

# First "path-like token with an extension" in a deliverable such as "Create src/foo.py (new)".
_PATH_TOKEN = re.compile(r"[A-Za-z0-9_\-./]+\.[A-Za-z0-9]+")
_LEADING_VERBS = ("create ", "modify ", "update ", "add ", "new file: ", "new: ")
_TRAILING_PARENTHESIS = re.compile(r"\s*\([^)]*\)\s*$")
_HAS_EXTENSION = re.compile(r"\.[A-Za-z0-9]{2,4}")
_ACTION_WORDS = ("create", "modify", "update", "add", "new")

_TEST_SUFFIXES = ("_test.py", ".spec.ts", ".spec.tsx", ".test.ts", ".test.tsx")
_CONFIG_EXTENSIONS = (".yml", ".yaml", ".json", ".toml", ".txt", ".ini")
_FRONTEND_EXTENSIONS = (".tsx", ".jsx", ".vue", ".svelte")


def normalize_deliverables(obj: Any) -> list[str]:
    """Flatten str/list/tuple/set/dict nesting into non-empty stripped strings (dicts: values).

    Production phases stored deliverables as ``{"tests": [...], "docs": [...]}``; counting that as
    zero deliverables sent them to the complexity default (pitfall P6). Other types go through str().
    """
    flat: list[str] = []

    def walk(item: Any) -> None:
        if item is None:
            return
        if isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, (list, tuple, set, frozenset)):
            for value in item:
                walk(value)
        else:
            text = (item if isinstance(item, str) else str(item)).strip()
            if text:
                flat.append(text)

    walk(obj)
    return flat


def extract_deliverable_path(deliverable: str) -> str:
    """The file path a deliverable names ("Modify src/a.py to add X" -> "src/a.py").

    Without a path-like token, the lower-cased text minus a leading verb and a trailing "(...)".
    """
    match = _PATH_TOKEN.search(deliverable)
    if match:
        return match.group(0)
    text = deliverable.lower()
    for verb in _LEADING_VERBS:  # applied in order, each at most once, as Autopack does
        if text.startswith(verb):
            text = text[len(verb):]
    return _TRAILING_PARENTHESIS.sub("", text).strip()


def is_doc_path(deliverable: str) -> bool:
    """Whether a deliverable names documentation: under ``docs/`` or a Markdown file."""
    text = deliverable.strip().lower().replace("\\", "/")
    return text.startswith("docs/") or text.endswith(".md")


@lru_cache(maxsize=4096)
def lower_basename(deliverable: str) -> str:
    """The lower-cased file name a deliverable ends with (SOT files are matched on it). Remembered: the
    estimator asks it of every deliverable of every estimate (twice for a match), and re-predicting a
    million stored events asks it of the same few hundred texts over and over (a path object each)."""
    return PurePosixPath(deliverable.lower().replace("\\", "/")).name


def deliverable_kind(path: str, category: str) -> str:
    """Row of the marginal-cost table for a path: the first of test, doc, config, frontend, python, sql."""
    lower = path.replace("\\", "/").lower()
    base = PurePosixPath(lower).name
    if lower.startswith("tests/") or "/tests/" in lower or base.startswith("test_") or base.endswith(_TEST_SUFFIXES):
        return "test"
    if lower.startswith("docs/") or lower.endswith(".md"):
        return "doc"
    if lower.endswith(_CONFIG_EXTENSIONS) or "migration" in lower or "alembic/versions" in lower:
        return "config"
    if lower.endswith(_FRONTEND_EXTENSIONS) or category == "frontend":
        return "frontend"
    if lower.endswith((".py", ".pyi")):
        return "python"
    if lower.endswith(".sql"):
        return "sql"
    return "default"


def estimate_confidence(deliverables: Sequence[str]) -> float:
    """0.5 + 0.3 * share naming a file extension + 0.2 * share with an action verb, at most 1.0."""
    if not deliverables:
        return 0.0
    n = len(deliverables)
    specific = sum(1 for d in deliverables if _HAS_EXTENSION.search(d)) / n
    actionable = sum(1 for d in deliverables if any(w in d.lower() for w in _ACTION_WORDS)) / n
    return min(1.0, 0.5 + 0.3 * specific + 0.2 * actionable)


# -- documentation features ----------------------------------------------------------------------


def extract_doc_features(deliverables: Sequence[str], task_description: str = "") -> dict[str, bool]:
    """Substring signals of documentation synthesis; research looks at the description only."""
    task = (task_description or "").lower()
    text = " ".join(deliverables).lower() + " " + task

    def any_in(haystack: str, *needles: str) -> bool:
        return any(needle in haystack for needle in needles)

    return {
        "api_reference_required": any_in(text, "api_reference", "api reference", "api.md", "endpoints", "rest api"),
        "examples_required": any_in(text, "examples.md", "example", "snippets", "sample code", "usage example"),
        "research_required": any_in(
            task, "from scratch", "create documentation for", "document the", "comprehensive", "investigate"
        ),
        "usage_guide_required": any_in(text, "usage_guide", "user guide", "getting started", "tutorial"),
    }


def is_doc_synthesis(features: dict[str, bool]) -> bool:
    """API reference, or examples together with research or a usage guide."""
    examples = features["examples_required"]
    return bool(
        features["api_reference_required"]
        or (examples and features["research_required"])
        or (examples and features["usage_guide_required"])
    )


# -- existing-file complexity ---------------------------------------------------------------------


class FileMeasures(NamedTuple):
    """What the complexity rule reads from a file: code lines, import lines, deepest indentation."""

    code_lines: int
    import_lines: int
    max_indent: int


def measure_source(text: str) -> FileMeasures:
    """Measures of a file's text; blank lines and ``#`` comment lines are not code."""
    code = [line for line in text.split("\n") if line.strip() and not line.strip().startswith("#")]
    return FileMeasures(
        len(code),
        sum(1 for line in code if "import " in line),
        max((len(line) - len(line.lstrip()) for line in code), default=0),
    )


def read_source(path: Path) -> str:
    """A file's text as the measures want it: UTF-8, undecodable bytes dropped."""
    return path.read_text(encoding="utf-8", errors="ignore")


class FileMeasurer:
    """Measures workspace files and remembers them while their size and mtime stay the same.

    Each estimator holds its own (no process-wide cache). The measures are kept rather than the
    multiplier, so coefficient tables with different bands reuse them. ``read_text`` is how a file's
    text is fetched; the default reads the disk.
    """

    def __init__(self, read_text: Callable[[Path], str] = read_source, limit: int = 2048) -> None:
        self._read_text = read_text
        self._limit = limit
        # (resolved path, mtime_ns, size) -> measures
        self._known: dict[tuple[str, int, int], FileMeasures] = {}

    def measures(self, path: Path) -> FileMeasures:
        """The measures of ``path``; ``OSError`` or ``ValueError`` when it cannot be read."""
        info = path.stat()
        key = (str(path.resolve()), info.st_mtime_ns, info.st_size)
        known = self._known.get(key)
        if known is not None:
            return known
        found = measure_source(self._read_text(path))
        if len(self._known) >= self._limit:
            self._known.clear()  # crude bound; forgetting only costs a re-read
        self._known[key] = found
        return found

    def clear(self) -> None:
        """Forget every measured file."""
        self._known.clear()


def file_complexity_multiplier(
    path: Path, coefficients: CoefficientTable, measurer: FileMeasurer | None = None
) -> float:
    """Multiplier on a modified file's marginal cost from its size, imports and nesting.

    Product of three step factors clamped to [0.5, 2.0] (by default); 1.0 when unreadable. Without
    a ``measurer`` the file is read afresh.
    """
    rules = coefficients.file_complexity
    try:
        code_lines, import_lines, max_indent = (measurer or FileMeasurer()).measures(Path(path))
    except (OSError, ValueError) as exc:
        logger.debug("file complexity of %s unavailable: %s", path, exc)
        return 1.0
    product = rules.code_lines.factor(code_lines) * rules.import_lines.factor(import_lines)
    product *= rules.max_indent.factor(max_indent)
    return max(rules.clamp.min, min(rules.clamp.max, product))


def path_exists(path: Path) -> bool | None:
    """``Path.exists`` that reports an unanswerable question (bad name, permissions) as None."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return None
