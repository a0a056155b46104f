"""JSON that strict parsers read: every non-finite float written as ``null``.

Python's ``json.dumps`` writes NaN and infinities as the bare words ``NaN`` and ``Infinity``,
which are not JSON (RFC 8259, section 6): ``JSON.parse``, ``jq`` and ``json.loads`` with a
``parse_constant`` that refuses them all fail on such output. An undefined statistic (an interval
from one seed) or an output of NaN weights is ``null`` instead, in the files the tools write and
in every ``--json`` the command line prints alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

__all__ = ["json_safe", "to_json"]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf, -inf) replaced by None, recursively
    through dicts, lists and tuples (tuples become lists, as JSON writes them)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """``json.dumps`` of :func:`json_safe` of ``value``, with ``allow_nan=False``.

    Raises:
        ValueError: a non-finite float that ``default`` produced (a bug: the caller's values are
            made safe first).
        TypeError: a value JSON cannot hold, without ``default``.
    """
    return json.dumps(json_safe(value), indent=indent, default=default, allow_nan=False)
