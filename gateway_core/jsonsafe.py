"""What every later stage accepts of a JSON value: storable, encodable, and parseable back
by every client (PROTOCOL.md section 2).

Python's ``json`` module parses things that no database, UTF-8 encoder or strict client
takes: lone surrogates (``"\\ud800"``), NaN and Infinity (including numbers that overflow a
double, such as ``1e999`` or a 400-digit integer, which JavaScript reads as Infinity), and
nesting as deep as the input goes. ``unfit`` says why a value is one of those. It serves
the API's request bodies and the ``meta`` of client tokens alike.
"""

from __future__ import annotations

import math
from typing import Any

#: Levels of arrays and objects in a request body, the body itself being level 1.
MAX_DEPTH = 64


def has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def printable(name: str) -> str:
    """A field name as an error may show it: errors are sent as UTF-8."""
    return name.encode("utf-8", "backslashreplace").decode() if has_surrogate(name) else name


def _overflows_double(number: int) -> bool:
    if number.bit_length() <= 1023:  # fast path: far below the largest double
        return False
    try:
        float(number)  # rounds as a client's parser does: OverflowError if it reaches inf
    except OverflowError:
        return True
    return False


def unfit(value: Any, *, level: int, allow_nul: bool = True) -> str | None:
    """Why ``value``, found at nesting ``level`` of a request body, cannot be accepted
    (see the module docstring), or None; ``allow_nul=False`` refuses NUL in strings too,
    for what is stored in JSON columns. Iterative, so that no depth of nesting reaches
    Python's recursion limit."""
    # Each entry: a container and its level. The value itself is wrapped, so that a
    # scalar is checked by the same loop.
    todo: list[tuple[Any, int]] = [([value], level - 1)]
    while todo:
        container, depth = todo.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels of arrays and objects"
        if type(container) is dict:
            for key in container:
                if has_surrogate(key):
                    return "contains a lone surrogate (not valid UTF-8)"
                if not allow_nul and "\x00" in key:
                    return "contains NUL"
            items = container.values()
        else:
            items = container
        for item in items:
            kind = type(item)
            if kind is dict or kind is list:
                todo.append((item, depth + 1))
            elif kind is str:
                if has_surrogate(item):
                    return "contains a lone surrogate (not valid UTF-8)"
                if not allow_nul and "\x00" in item:
                    return "contains NUL"
            elif kind is float:
                if not math.isfinite(item):
                    return "contains NaN or Infinity, or a number too large for a double"
            elif kind is int and _overflows_double(item):
                return "contains a number too large for a double (clients would read Infinity)"
    return None
