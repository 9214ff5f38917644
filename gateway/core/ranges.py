"""Allowed ranges of numbers that operators and callers choose.

A number from outside (a config key, a command-line flag, an API argument) must be
finite and inside a stated range before anything uses it: ``nan`` compares false
with everything, so a bare ``value <= 0`` check lets it through (an idempotency
window of ``nan`` hours silently matched nothing), and ``inf`` or a huge value
overflows ``timedelta`` or ``time.sleep`` deep inside an actor. One small type,
shared by the config loader, the command line and the resolvers, so every surface
words a refusal the same way and the documentation can print the same text.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Range", "flag"]


@dataclass(frozen=True, slots=True)
class Range:
    """``low`` to ``high``, both included unless ``above`` (then ``low`` is excluded:
    "more than 0" for durations, where 0 would mean a busy loop or no wait at all)."""

    low: float
    high: float
    above: bool = False

    def contains(self, value: float) -> bool:
        """True for a finite number inside the range (never for nan or infinity)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        low_ok = value > self.low if self.above else value >= self.low
        return low_ok and value <= self.high

    def describe(self) -> str:
        """The range in words, as the docs and the error messages print it."""
        if self.above:
            return f"over {_number(self.low)}, up to {_number(self.high)}"
        return f"{_number(self.low)} to {_number(self.high)}"

    def refusal(self, name: str, value: object, whole: bool = False) -> str:
        """Why ``value`` is refused, naming ``name`` and saying what is allowed."""
        kind = "a whole number" if whole else "a finite number"
        return f"{name} must be {kind}, {self.describe()} (got {value!r})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def flag(kind: type[int] | type[float], allowed: Range) -> Callable[[str], float]:
    """An argparse ``type=`` that refuses what ``allowed`` does not contain, so a
    command-line flag gets the same check (and the same wording) as a config key."""

    wanted = f"{'a whole' if kind is int else 'a finite'} number, {allowed.describe()}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; use {wanted}") from None
        if not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; use {wanted}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse
