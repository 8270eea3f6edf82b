"""The indented JSON of printed documents and reports: the standard library's text, at C speed."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from autopack_pipeline.cli import common
from autopack_pipeline.services.json_text import indented_json


@dataclasses.dataclass
class _Row:
    x: int


def test_the_text_is_the_standard_librarys_indent_2():
    document = {"name": "tests/low", "n": 3, "ratio": 1.25, "ok": True, "none": None, "empty": [], "nested": {},
                "grid": [[0.5, 2.0], [3.0, 100.0]], "text": "quote \" and \\ and\nnewline"}
    assert indented_json(document) == json.dumps(document, indent=2)


def test_keys_and_objects_are_written_as_json_dumps_default_str_writes_them():
    moment = datetime(2025, 1, 1, tzinfo=timezone.utc)
    document = {1: "one", None: "none", "path": Path("/tmp/report.json"), "at": moment, "row": _Row(1)}
    assert json.loads(indented_json(document, default=str)) == json.loads(json.dumps(document, default=str))


def test_numpy_values_are_numbers_and_lists():
    document = {"f": np.float64(0.1), "i": np.int64(5), "b": np.bool_(True), "a": np.array([1, 2])}
    assert json.loads(indented_json(document)) == {"f": 0.1, "i": 5, "b": True, "a": [1, 2]}


def test_what_json_dumps_wrote_differently():
    assert indented_json(["±5%"]) == '[\n  "±5%"\n]'  # UTF-8, not \u00b1
    assert json.loads(indented_json([math.nan, math.inf])) == [None, None]  # strict JSON, not NaN
    assert json.loads(indented_json([1e-7])) == [1e-7]


def test_an_object_without_a_default_is_refused():
    with pytest.raises(TypeError):
        indented_json({"path": Path("/tmp")})


class _Stdout(io.TextIOWrapper):
    def __init__(self, encoding: str):
        super().__init__(io.BytesIO(), encoding=encoding)

    def text(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode(self.encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "ascii"])
def test_print_json_writes_what_stdout_can_take(monkeypatch, encoding):
    out = _Stdout(encoding)
    monkeypatch.setattr("sys.stdout", out)
    common.print_json({"action": "within ±5% of Ω", "at": Path("/x")})
    printed = out.text()
    assert json.loads(printed) == {"action": "within ±5% of Ω", "at": "/x"} and printed.endswith("}\n")
    assert ("Ω" in printed) == (encoding == "utf-8")  # escaped where stdout could not take it


def test_print_json_into_text_in_memory_is_utf8(monkeypatch):
    """A caller capturing the output in memory (``redirect_stdout(io.StringIO())``, the benchmarks) gets
    orjson's text: a StringIO has no encoding and takes any character."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    common.print_json({"action": "within ±5%", "f": 1e-7})
    assert out.getvalue() == '{\n  "action": "within ±5%",\n  "f": 1e-7\n}\n'
