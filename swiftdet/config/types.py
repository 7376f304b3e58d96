"""The value ranges of numeric config fields, and the base of every config section.

A numeric field is annotated with its range, e.g. ``log_period: PositiveInt = 20`` or
``hflip_prob: Probability = 0.5``; the config loader checks every value against it when a config
is built, overridden or read back, so that ``solver.log_period=0`` or ``solver.base_lr=inf`` is
refused at load time with the key's name, not hours later inside the trainer. Floats must also be
finite.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Annotated, Any

from swiftdet.errors import ConfigError

__all__ = [
    "Fraction",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Range",
    "Section",
]


@dataclasses.dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where ``low_open`` / ``high_open``); None: unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any finite number"

    def check(self, value: float, key: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"Config key '{key}' must be a finite number ({self}), got {value!r}.")
        if not self.contains(value):
            raise ConfigError(f"Config key '{key}' must be {self}, got {value!r}.")


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1)]
Fraction = Annotated[float, Range(0, 1, low_open=True)]  # (0, 1]: a share that must not be empty


class Section:
    """Base of every config dataclass: assigning a field that does not exist is an error.

    Without it ``cfg.solver.bse_lr = 0.5`` in a ``.py`` config would add a new attribute that
    nothing reads, and the run would silently use the default learning rate.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        fields = getattr(type(self), "__dataclass_fields__", {})
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.5)
            where = " or ".join(f"'{k}.{name}'" for k in getattr(type(self), "config_keys", ())) or f"'{name}'"
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown config key {where} ({type(self).__name__} has no field '{name}').{hint} "
                f"Its fields: {', '.join(fields)}."
            )
        object.__setattr__(self, name, value)
