"""Unit tests for gateway.core.ranges and the numeric flags of the command line."""

from __future__ import annotations

import argparse

import pytest

from gateway.cli.wagate import build_parser
from gateway.core.ranges import Range, flag


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, "1", None])
def test_a_range_never_contains_nan_infinity_or_a_non_number(value: object) -> None:
    assert not Range(-1e300, 1e300).contains(value)  # type: ignore[arg-type]


def test_edges_of_closed_and_open_ranges() -> None:
    closed, above = Range(1, 10), Range(0, 10, above=True)
    assert closed.contains(1) and closed.contains(10) and not closed.contains(0.999)
    assert not above.contains(0) and above.contains(1e-9) and not above.contains(10.001)
    assert closed.describe() == "1 to 10"
    assert above.describe() == "over 0, up to 10"
    assert Range(0.5, 2.5).describe() == "0.5 to 2.5"


def test_a_flag_refuses_with_the_range_in_its_message() -> None:
    parse = flag(float, Range(0, 60, above=True))
    assert parse("1.5") == 1.5
    for text, fragment in (("nan", "out of range"), ("inf", "out of range"),
                           ("0", "out of range"), ("61", "out of range"),
                           ("abc", "not a number"), ("1e999", "out of range")):
        with pytest.raises(argparse.ArgumentTypeError, match=fragment) as info:
            parse(text)
        assert "over 0, up to 60" in str(info.value)
    with pytest.raises(argparse.ArgumentTypeError, match="a whole number, 1 to 65535"):
        flag(int, Range(1, 65535))("1.5")


@pytest.mark.parametrize("argv", [
    ["serve", "--port", "0"], ["serve", "--port", "70000"], ["serve", "--admin-port", "nan"],
    ["status", "--admin-port", "-1"], ["drain", "--admin-port", "65536"],
    ["drain", "--timeout", "nan"], ["drain", "--timeout", "inf"], ["drain", "--timeout", "-1"],
    ["drain", "--interval", "0"], ["drain", "--interval", "nan"],
    ["sim", "scan", "--wait", "inf"], ["sim", "scan", "--wait", "-1"],
    ["sim", "drop", "--down-for", "nan"], ["sim", "drop", "--down-for", "1e12"],
    ["sim", "fail-next", "-1"], ["audit", "tail", "-n", "-5"], ["audit", "tail", "-n", "1e9"],
])
def test_numeric_flags_out_of_range_are_refused_before_anything_runs(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A nan ``--interval`` used to crash ``wagate drain`` in time.sleep, a nan
    ``--timeout`` made it spin for ever: every numeric flag has a range."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "out of range" in error or "not a number" in error, error


def test_token_lifetimes_beyond_a_century_are_refused_not_crashed() -> None:
    from gateway.auth.tokens import parse_expiry

    for text in ("99999999999999d", "9" * 30 + "m", "36501d", "0d"):
        with pytest.raises(ValueError, match="1 minute to 100 years"):
            parse_expiry(text, 0.0)
    assert parse_expiry("36500d", 0.0) == 36500 * 86400
