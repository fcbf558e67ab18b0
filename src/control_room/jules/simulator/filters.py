"""The `filter` parameter: the small part of AIP-160 the real API answers, parsed without I/O.

- sessions.list: `archived = true` (or `false`, or `!=`); archived sessions are hidden without it.
- activities.list: `create_time > "<RFC 3339>"` (exclusive; `>=` inclusive); `createTime` too.
- sources.list: `name = "sources/github/o/r"`, several joined by `OR`.

Spacing around operators is free and values may be double-quoted, single-quoted or bare, as
the real API tolerates. Anything else (another field, another operator, a dangling `OR`, an
unparsable time) raises `InvalidArgument`, which the HTTP layer answers 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from control_room.jules.simulator.errors import InvalidArgument
from control_room.jules.simulator.timestamps import parse_timestamp

_TERM: Final = re.compile(
    r"""\s*(?P<field>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op>>=|<=|!=|=|>|<|:)\s*"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s"'()]+)\s*"""
)
_CONNECTOR: Final = re.compile(r"(AND|OR)\s+")
_ESCAPE: Final = re.compile(r"\\(.)")
CREATE_TIME_FIELDS: Final = frozenset({"create_time", "createTime"})


@dataclass(frozen=True, slots=True)
class Comparison:
    """One `field op value` term, with the value unquoted."""

    field: str
    op: str
    value: str


@dataclass(frozen=True, slots=True)
class TimeBound:
    """`create_time > t` (or `>=` when `inclusive`), t in nanoseconds since the epoch."""

    after_ns: int
    inclusive: bool = False


def _invalid(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid filter {text!r}: {why}", field="filter")


def parse(text: str) -> tuple[list[Comparison], set[str]]:
    """`a = 1 OR b > "x"` -> the comparisons and the connectors (`AND`, `OR`) between them."""
    terms: list[Comparison] = []
    connectors: set[str] = set()
    position = 0
    while True:
        match = _TERM.match(text, position)
        if match is None:
            raise _invalid(text, f"expected `field op value` at character {position + 1}.")
        value = match["value"]
        if value[0] in "\"'":
            value = _ESCAPE.sub(r"\1", value[1:-1])
        terms.append(Comparison(match["field"], match["op"], value))
        position = match.end()
        if position == len(text):
            return terms, connectors
        connector = _CONNECTOR.match(text, position)
        if connector is None:
            raise _invalid(text, f"expected AND or OR at character {position + 1}.")
        connectors.add(connector[1])
        position = connector.end()


def _single(text: str) -> Comparison:
    terms, _ = parse(text)
    if len(terms) != 1:
        raise _invalid(text, "only one comparison is supported here.")
    return terms[0]


def archived_filter(text: str | None) -> bool:
    """sessions.list `filter` -> list the archived sessions (True) or the others (False)."""
    if text is None or not text.strip():
        return False
    term = _single(text)
    if term.field != "archived":
        raise _invalid(text, f"unsupported field {term.field!r}; only `archived` is.")
    if term.op not in ("=", "!="):
        raise _invalid(text, f"`archived` takes = or !=, not {term.op}.")
    value = term.value.lower()
    if value not in ("true", "false"):
        raise _invalid(text, f"`archived` is true or false, not {term.value!r}.")
    return (value == "true") == (term.op == "=")


def create_time_filter(text: str | None) -> TimeBound | None:
    """activities.list `filter` -> the time activities must be newer than (None: all of them)."""
    if text is None or not text.strip():
        return None
    term = _single(text)
    if term.field not in CREATE_TIME_FIELDS:
        raise _invalid(text, f"unsupported field {term.field!r}; only `create_time` is.")
    if term.op not in (">", ">="):
        raise _invalid(text, f"`create_time` takes > or >=, not {term.op}.")
    return TimeBound(parse_timestamp(term.value), inclusive=term.op == ">=")


def name_filter(text: str | None) -> frozenset[str] | None:
    """sources.list `filter` -> the source names asked for (None: every source)."""
    if text is None or not text.strip():
        return None
    terms, connectors = parse(text)
    if "AND" in connectors:
        raise _invalid(text, "names can only be joined with OR.")
    for term in terms:
        if term.field != "name" or term.op != "=":
            raise _invalid(text, 'only `name = "sources/..."` terms are supported.')
    return frozenset(term.value for term in terms)
