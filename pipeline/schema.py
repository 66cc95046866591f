"""The building blocks of every params schema: :mod:`pipeline.config`, the models' ``extra`` knobs, augmentation policies.

A :class:`Section` is a frozen pydantic model read from one mapping of ``params.yaml``: an unknown key
is refused naming the allowed ones, a missing one naming the required ones. Field types keep today's
rules: integers and booleans are strict (``1.5``, ``"3"``, ``"yes"`` are refused), numbers are finite
and may come as numeric strings (``dvc exp run -S`` writes ``1e-05``, which YAML 1.1 reads as a
string), ranges name both bounds. :func:`pipeline.config.parse` turns the first failure into one line
naming the dotted key. No Keras here: params are checked before TensorFlow starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StrictInt, ValidationInfo, model_validator


class KeyedError(ValueError):
    """A bad value at ``key``, a path below the object being validated (for checks that span several of its keys)."""

    def __init__(self, key: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = (key,) if isinstance(key, str) else tuple(key)


class UnknownKey(KeyedError):
    """``key`` is none of ``allowed``; ``owner`` names whose keys those are (default: the enclosing key)."""

    def __init__(self, key: str | tuple[str, ...], allowed: tuple[str, ...] | list[str], owner: str | None = None) -> None:
        super().__init__(key, "unknown key")
        self.allowed = tuple(sorted(allowed))
        self.owner = owner


class Section(BaseModel):
    """One mapping of params: exactly its keys, then typed and frozen.

    ``DERIVED`` fields are filled in by the parser (a variant's name from its key), never written in
    params; ``FILLED`` ones are required by the model but optional in params, where the parser supplies
    them (a variant's ``train`` from the top-level one). The validation context's ``owner`` names the
    mapping in an unknown key's message (``lenet5's extra``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    DERIVED: ClassVar[tuple[str, ...]] = ()
    FILLED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def params_keys(cls) -> list[str]:
        """The keys this mapping may have in params."""
        return [k for k in cls.model_fields if k not in cls.DERIVED]

    @model_validator(mode="before")
    @classmethod
    def _exact_keys(cls, data: Any, info: ValidationInfo) -> Any:
        # pydantic's own missing / extra errors name neither the required nor the allowed keys
        if isinstance(data, BaseModel):
            return data
        keys = cls.params_keys()
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping with keys {', '.join(sorted(keys))}, got {data!r}")
        unknown = sorted(str(k) for k in data if k not in cls.model_fields)
        if unknown:
            raise UnknownKey(unknown[0], keys, (info.context or {}).get("owner"))
        required = [k for k in keys if cls.model_fields[k].is_required() and k not in cls.FILLED]
        missing = [k for k in required if k not in data]
        if missing:
            raise KeyedError(missing[0], f"missing key (required: {', '.join(required)})")
        return data


def _within(lo: float | None, hi: float | None) -> AfterValidator:
    def check(value: Any) -> Any:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            shown = int(value) if isinstance(value, float) and value.is_integer() else value  # -1, as written, not -1.0
            raise ValueError(f"{shown!r} is outside [{lo}, {hi}]")
        return value

    return AfterValidator(check)


def integer(lo: int | None = None, hi: int | None = None) -> Any:
    """A strict integer in [lo, hi] (``1.5``, ``"3"`` and ``true`` are refused)."""
    return Annotated[StrictInt, _within(lo, hi)]


def _finite(value: Any) -> Any:
    # lax float() would take true as 1.0; a numeric string ("1e-05") is what `dvc exp run -S` leaves for YAML 1.1
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a number, got {value!r}")
    return number


def number(lo: float | None = None, hi: float | None = None) -> Any:
    """A finite float in [lo, hi], from an int, a float or a numeric string; ``true`` and ``"2%"`` are refused."""
    return Annotated[float, BeforeValidator(_finite), _within(lo, hi)]


def _text(value: Any) -> Any:
    if not (isinstance(value, str) and value.strip()):
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


Text = Annotated[str, BeforeValidator(_text)]
Units = tuple[integer(1), ...]  # channel or unit counts, one per layer or stage
