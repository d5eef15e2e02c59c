"""Input checks ComfyUI's own validation does not make (NaN passes its min/max test, and ComfyUI 0.3.75 does not
check V3 combo values against their options), and the one way a node puts its name in front of an error."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import comfy.samplers


def finite(node: str, name: str, value: float, low: float | None = None, high: float | None = None) -> float:
    """`value` of input `name`, if it is a finite number within [low, high]; else a ValueError naming the input."""
    bounds = f" in [{low}, {high}]" if low is not None and high is not None else (
        f" >= {low}" if low is not None else (f" <= {high}" if high is not None else ""))
    if not (isinstance(value, (int, float)) and math.isfinite(value)
            and (low is None or value >= low) and (high is None or value <= high)):
        raise ValueError(f"{node}: {name} must be a finite number{bounds}, got {value!r}")
    return value


def one_of(node: str, name: str, value: str, options) -> str:
    if value not in options:
        shown = ", ".join(list(options)[:12])
        raise ValueError(f"{node}: {name} {value!r} is not one of the options ({shown}, ...)")
    return value


def sampler_and_scheduler(node: str, sampler_name: str, scheduler: str) -> None:
    one_of(node, "sampler_name", sampler_name, comfy.samplers.SAMPLER_NAMES)
    one_of(node, "scheduler", scheduler, comfy.samplers.SCHEDULER_NAMES)


@contextmanager
def prefix_errors(label: str, *kinds: type[Exception]) -> Iterator[None]:
    """Re-raise a ValueError (or only the given kinds) from the block as a ValueError that starts with `label`
    (a node's name, or an input's): `label: message`, without the traceback of the inner error."""
    caught = kinds or (ValueError,)
    try:
        yield
    except caught as err:
        raise ValueError(f"{label}: {err}") from None
