"""Validation helpers shared by every config dataclass (method and continual-pre-training configs).

Each check raises ``ValueError`` naming the class and the field, with the value it got.
"""
from __future__ import annotations

import math

__all__ = ["ConfigChecks"]


class ConfigChecks:
    """Mixin of field checks for a dataclass's ``validate()``."""

    def _value(self, name: str) -> float:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{type(self).__name__}.{name} must be a finite number, got {v!r}")
        return float(v)

    def check_positive(self, name: str) -> None:
        if self._value(name) <= 0:
            raise ValueError(f"{type(self).__name__}.{name} must be > 0, got {getattr(self, name)!r}")

    def check_nonnegative(self, name: str) -> None:
        if self._value(name) < 0:
            raise ValueError(f"{type(self).__name__}.{name} must be >= 0, got {getattr(self, name)!r}")

    def check_range(self, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
        v = self._value(name)
        if (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi)):
            lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
            raise ValueError(f"{type(self).__name__}.{name} must be in {lb}{lo}, {hi}{rb}, got {getattr(self, name)!r}")

    def check_bool(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{type(self).__name__}.{name} must be a bool, got {getattr(self, name)!r}")

    def check_choice(self, name: str, choices: tuple) -> None:
        v = getattr(self, name)
        if v not in choices:
            raise ValueError(f"{type(self).__name__}.{name} must be one of {choices}, got {v!r}")

    def check_int(self, name: str, minimum: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{type(self).__name__}.{name} must be an integer >= {minimum}, got {v!r}")
