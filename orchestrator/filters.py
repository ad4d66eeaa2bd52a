"""Request filters: a whitelist turned into query clauses.

A search request restricts its results with ``{field: value | [values] | {"gte": x, "lte": y}}``:

* ``{"genre": "pop"}``                  -> ``{"term": {"genre": "pop"}}``
* ``{"genre": ["pop", "soul"]}``        -> ``{"terms": {"genre": ["pop", "soul"]}}``
* ``{"year": {"gte": 1990, "lt": 2000}}`` -> ``{"range": {"year": {"gte": 1990.0, "lt": 2000.0}}}``

Fields are limited to what the catalogue declares (its facet fields, its numeric fields, and
``entity_type``; recorded in the index mapping's ``_meta.ltrr``). Values are scalars; ranges are
for numeric fields only. Anything else (an unknown field, a nested object, a script, a bool
query, a list of objects, too many values) is a :class:`FilterError`: the request never carries
query DSL of its own, so a filter cannot become a script or widen the search.

:func:`parse_cli_filters` reads the ``ltrr search --filter`` forms (``genre=pop``,
``genre=pop,soul``, ``year>=1990``, ``year<2000``, or a JSON object) into that mapping.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENTITY_TYPE", "FilterError", "FilterFields", "build_filter_clauses", "parse_cli_filters"]

ENTITY_TYPE = "entity_type"
MAX_FIELDS = 16  # fields in one request's filters
MAX_VALUES = 100  # values of one field (a terms filter)
MAX_VALUE_CHARS = 1024  # one keyword value
RANGE_KEYS = ("gt", "gte", "lt", "lte")


class FilterError(ValueError):
    """A request's filters are not acceptable (a client error, like HTTP 400)."""


@dataclass(frozen=True)
class FilterFields:
    """The fields a catalogue allows filters on: keyword fields (facets and ``entity_type``) take
    values; numeric fields take values and ranges."""

    keyword: frozenset[str]
    numeric: frozenset[str] = frozenset()

    @classmethod
    def of(cls, facets: Iterable[str] = (), numeric: Iterable[str] = ()) -> FilterFields:
        return cls(frozenset(facets) | {ENTITY_TYPE}, frozenset(numeric))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> FilterFields:
        """From an index mapping's ``_meta.ltrr`` (``facets`` and ``numeric`` lists)."""
        facets = meta.get("facets") or ()
        numeric = meta.get("numeric") or ()
        return cls.of((f for f in facets if isinstance(f, str)), (f for f in numeric if isinstance(f, str)))

    @property
    def names(self) -> list[str]:
        return sorted(self.keyword | self.numeric)


def build_filter_clauses(filters: Mapping[str, Any] | None, fields: FilterFields) -> list[dict[str, Any]]:
    """Filter clauses (term / terms / range) for ``filters``; :class:`FilterError` for anything
    the whitelist does not allow. ``None`` or ``{}`` gives no clauses."""
    if filters is None:
        return []
    if not isinstance(filters, Mapping):
        raise FilterError("filters must be an object {field: value | [values] | {gte/gt/lte/lt: number}}, "
                          f"not {type(filters).__name__}")
    if len(filters) > MAX_FIELDS:
        raise FilterError(f"at most {MAX_FIELDS} filter fields, got {len(filters)}")
    clauses: list[dict[str, Any]] = []
    for name, spec in filters.items():
        if not isinstance(name, str):
            raise FilterError(f"filter field names must be strings, got {type(name).__name__}")
        numeric = name in fields.numeric
        if not numeric and name not in fields.keyword:
            raise FilterError(f"cannot filter on {_show(name)}; filterable fields: {', '.join(fields.names) or 'none'}")
        if isinstance(spec, Mapping):
            clauses.append({"range": {name: _range(name, spec, numeric)}})
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise FilterError(f"{name}: an empty list of values matches nothing")
            if len(spec) > MAX_VALUES:
                raise FilterError(f"{name}: at most {MAX_VALUES} values, got {len(spec)}")
            values = list(dict.fromkeys(_scalar(name, v, numeric) for v in spec))
            clauses.append({"term": {name: values[0]}} if len(values) == 1 else {"terms": {name: values}})
        else:
            clauses.append({"term": {name: _scalar(name, spec, numeric)}})
    return clauses


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(name: str, value: Any, numeric: bool) -> str | float:
    if numeric:
        return _number(name, value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FilterError(f"{name}: values must be strings (or lists of strings), got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_VALUE_CHARS:
        raise FilterError(f"{name}: values must be 1 to {MAX_VALUE_CHARS} characters")
    return text


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise FilterError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise FilterError(f"{name}: expected a number, got {_show(value)}") from None
    elif isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise FilterError(f"{name}: {_show(value)} is out of range") from None
    else:
        raise FilterError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise FilterError(f"{name}: expected a finite number, got {_show(value)}")
    return number


def _range(name: str, spec: Mapping[str, Any], numeric: bool) -> dict[str, float]:
    if not numeric:
        raise FilterError(f"{name}: ranges are for numeric fields; give a value or a list of values")
    keys = list(spec)
    bad = [k for k in keys if k not in RANGE_KEYS]
    if bad or not keys:
        raise FilterError(f"{name}: a range takes gt, gte, lt and lte only, got {_show(bad or keys)}")
    if ("gt" in spec and "gte" in spec) or ("lt" in spec and "lte" in spec):
        raise FilterError(f"{name}: give one lower bound (gt or gte) and one upper bound (lt or lte)")
    out = {k: _number(name, spec[k]) for k in RANGE_KEYS if k in spec}
    low = out.get("gt", out.get("gte"))
    high = out.get("lt", out.get("lte"))
    if low is not None and high is not None and low > high:
        raise FilterError(f"{name}: the lower bound {low:g} is above the upper bound {high:g}")
    return out


# ------------------------------------------------------------------------------------------------
# The command line's forms
# ------------------------------------------------------------------------------------------------

_CLI_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|>|<|=)(.*)$", re.S)
_CLI_RANGE = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}


def parse_cli_filters(items: Iterable[str]) -> dict[str, Any]:
    """``--filter`` options into a filters mapping (checked later by :func:`build_filter_clauses`).

    ``field=value``; ``field=a,b`` for several values (repeating ``field=...`` adds values);
    ``field>=x``, ``field>x``, ``field<=y``, ``field<y`` for ranges (repeat to give both bounds);
    or a JSON object such as ``{"artist": "Crosby, Stills & Nash"}`` for values holding commas.
    """
    out: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                data = json.loads(item)
            except json.JSONDecodeError as e:
                raise FilterError(f"--filter {_show(item)} is not valid JSON: {e.msg}") from None
            if not isinstance(data, dict):
                raise FilterError("a JSON --filter must be an object {field: value | [values] | {gte: x}}")
            for name, spec in data.items():
                if name in out:
                    raise FilterError(f"--filter gives {_show(name)} more than once")
                out[name] = spec
            continue
        m = _CLI_RE.match(item)
        if not m:
            raise FilterError(f"--filter {_show(item)}: use field=value, field=a,b, field>=x, field<=y or JSON")
        name, op, raw = m.group(1), m.group(2), m.group(3).strip()
        if not raw:
            raise FilterError(f"--filter {_show(item)} has no value")
        current = out.get(name)
        if op == "=":
            values = [v.strip() for v in raw.split(",") if v.strip()]
            if current is None:
                out[name] = values if len(values) > 1 else values[0]
            elif isinstance(current, dict):
                raise FilterError(f"--filter {name}: give either values or a range, not both")
            else:
                out[name] = (current if isinstance(current, list) else [current]) + values
        else:
            key = _CLI_RANGE[op]
            if current is None:
                out[name] = current = {}
            elif not isinstance(current, dict):
                raise FilterError(f"--filter {name}: give either values or a range, not both")
            if key in current:
                raise FilterError(f"--filter {name}{op} is given twice")
            current[key] = raw
    return out
