from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbcore.errors import SpecError
from lbcore.spec import bind_params, format_spec, parse_spec


def test_parse_name_only():
    assert parse_spec("lb") == ("lb", {})
    assert parse_spec(" fan ") == ("fan", {})


def test_parse_params():
    assert parse_spec("mifgsm:steps=20,alpha=1,decay=0.5") == (
        "mifgsm", {"steps": "20", "alpha": "1", "decay": "0.5"})


@pytest.mark.parametrize("bad", ["", ":", "a:b", "a:=1", "a:x=1,x=2", "a=b"])
def test_parse_errors(bad):
    with pytest.raises(SpecError):
        parse_spec(bad)


def _factory(alpha: float = 1.0, steps: int = 20, flag: bool = False, name: str | None = None,
             mode: Literal["a", "b"] = "a"):
    return alpha, steps, flag, name, mode


def test_bind_types():
    got = bind_params(_factory, {"alpha": "0.5", "steps": "3", "flag": "yes", "name": "none", "mode": "b"}, "f")
    assert got == {"alpha": 0.5, "steps": 3, "flag": True, "name": None, "mode": "b"}


def test_bind_unknown_key_lists_valid():
    with pytest.raises(SpecError, match=r"unknown parameter 'beta' \(valid: alpha, steps, flag, name, mode\)"):
        bind_params(_factory, {"beta": "1"}, "f:beta=1")


@pytest.mark.parametrize("key,value", [("alpha", "x"), ("steps", "1.5"), ("flag", "maybe"), ("mode", "c")])
def test_bind_ill_typed(key, value):
    with pytest.raises(SpecError, match=key):
        bind_params(_factory, {key: value}, "f")


names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
values = st.from_regex(r"[A-Za-z0-9_./-]{1,10}", fullmatch=True)


@given(names, st.dictionaries(names, values, max_size=4))
def test_format_parse_round_trip(name, params):
    assert parse_spec(format_spec(name, params)) == (name, params)
