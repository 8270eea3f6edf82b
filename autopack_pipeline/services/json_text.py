"""The indented JSON of the documents a command prints (``--json``) and the reports it writes.

Through orjson, not the standard library: ``json.dumps`` with ``indent`` runs the pure-Python encoder
(its C encoder only writes compact JSON), which cost ``calibrate`` 30 ms for its 1.3 MB report and
45 ms for its printed document at a million events; orjson writes the same text in about 1 ms each.
The text is the standard library's ``indent=2`` text but for three things:
- non-ASCII characters are written as UTF-8, not ``\\uXXXX`` escapes;
- a float with an exponent reads ``1e-7``, not ``1e-07``;
- a NaN or an infinity is ``null``: JSON has no such number, and ``json.dumps`` wrote ``NaN``, which
  strict parsers refuse.
Numpy scalars and arrays are written as numbers and lists. ``default`` turns any other object into
something JSON holds (``str`` for what a command prints: paths, datetimes as ``str()`` writes them,
dataclasses); without it such an object raises ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

_OPTIONS = (
    orjson.OPT_INDENT_2
    | orjson.OPT_NON_STR_KEYS  # keys as json.dumps writes them: 1 -> "1", None -> "null"
    | orjson.OPT_SERIALIZE_NUMPY
    # What orjson would write its own way goes to ``default``, as json.dumps sends it: a datetime as
    # ``str()`` writes it ("2025-01-01 00:00:00+00:00"), a dataclass as its repr.
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def indented_json(document: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """``document`` as JSON text indented by two spaces, without a final newline (an object neither
    orjson nor ``default`` can write raises ``orjson.JSONEncodeError``, a ``TypeError``)."""
    return orjson.dumps(document, default=default, option=_OPTIONS).decode()
