"""Compact JSON text of the card's resources and Bundles.

Every write serializes each resource once for the store and the outbox Bundle once more;
the standard library's encoder was a tenth of a bridge write's CPU. ``orjson`` writes the
same text (UTF-8, no spaces, no ASCII escaping; only numbers below 1e-4 are spelled
differently, ``0.00001`` or ``1e-7`` for ``1e-05`` or ``1e-07``) several times faster.
The standard encoder remains the fallback for what ``orjson`` refuses: integers beyond 64
bits, which a FHIR ``decimal`` may hold, and (passed through to it, so they fail as they
always did) dates, dataclasses and subclasses of the JSON types."""

from __future__ import annotations

import json
from typing import Any

import orjson

_PASS_THROUGH = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def compact(data: Any, *, sort_keys: bool = False) -> str:
    """``data`` as compact JSON text, non-ASCII characters as they are; ``sort_keys``
    for a canonical text (the same object always gives the same text)."""
    option = _PASS_THROUGH | orjson.OPT_SORT_KEYS if sort_keys else _PASS_THROUGH
    try:
        return orjson.dumps(data, option=option).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)


__all__ = ["compact"]
