"""``autopack_pipeline.storage`` names its public functions but loads them on first use."""

from __future__ import annotations

import importlib

import pytest

import autopack_pipeline.storage as storage


def test_every_public_name_resolves_to_its_module() -> None:
    assert sorted(storage.__all__) == sorted(storage._EXPORTS)
    for name, module in storage._EXPORTS.items():
        assert getattr(storage, name) is getattr(importlib.import_module(f"autopack_pipeline.storage.{module}"), name)
    assert set(storage.__all__) <= set(dir(storage))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        storage.no_such_thing  # noqa: B018
    from autopack_pipeline.storage import spool  # a submodule still imports as one

    assert spool.__name__ == "autopack_pipeline.storage.spool"
