"""The flat module names of before the stage subpackages are the new modules themselves (``legacy.py``)."""

from __future__ import annotations

import importlib

import pytest

from customer_value.legacy import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_is_the_module_that_holds_its_code_now(old: str) -> None:
    new = importlib.import_module(f"customer_value.{MOVED[old]}")
    assert importlib.import_module(f"customer_value.{old}") is new
    assert new.__spec__.name == new.__name__ == f"customer_value.{MOVED[old]}"  # its own spec kept


def test_names_that_never_existed_are_still_missing() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("customer_value.no_such_module")
