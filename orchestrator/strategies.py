"""The strategies stage: retrieval plans as data, stored as mustache templates, run in one round trip.

A plan is one YAML file in ``query_plans/`` (id, description, cost hint, catalogue fields, typed
parameters with defaults, an example, the mustache template, and ``index: memory`` for a plan that
searches the catalogue's Q2E memory ``<alias>-q2e`` instead of the catalogue). ``sync_plans`` stores each
template as a script with a content-addressed id ``ltrr-<plan>-<sha8>`` (so syncing twice is a
no-op and a changed template never overwrites one that running searches use) and validates it by
rendering the example through ``_render/template``.

Template safety: user text only ever reaches OpenSearch as a template *parameter*. String
parameters sit inside JSON quotes, where mustache JSON-escapes them; lists, objects and vectors go
through ``{{#toJson}}``; numbers are type-checked here before sending. ``check_template`` enforces
these rules for every plan, so a parameter can never close the JSON around it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import ConnectionTimeout, NotFoundError, SerializationError, TransportError

from .config import ConfigError, query_plans_dir
from .datatypes import ArmStatus, Hit, StrategyResult

_KEY_RE = re.compile(r"^q_[0-9a-f]{16}$")
_PLAN_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TAG_RE = re.compile(r"\{\{\s*([#^/]?)\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
PARAM_TYPES = ("string", "integer", "number", "boolean", "object_list", "vector", "key")
TARGETS = ("catalogue", "memory")  # what a plan searches: the catalogue alias, or its Q2E memory (<alias>-q2e)
TIMEOUT_PARAM = "timeout"
NOT_APPLICABLE = "not applicable to this query"  # the detail of a plan whose `applies.nonempty` input is empty
# Only what _to_result reads: a smaller response is faster to send and to parse.
MSEARCH_FILTER_PATH = ",".join([
    "took", "responses.took", "responses.timed_out", "responses.status", "responses.error",
    "responses._shards.failed", "responses._shards.failures", "responses.hits.hits._id", "responses.hits.hits._score",
])


class PlanError(ValueError):
    """A query plan file is invalid; the message names the file and the problem."""


class ParamError(ValueError):
    """A parameter value does not fit its declared type (a client error, like HTTP 400)."""


def plans_dir() -> Path:
    """``LTRR_QUERY_PLANS``, else the installed ``query_plans/`` (package data)."""
    try:
        return query_plans_dir()
    except ConfigError as e:
        raise PlanError(str(e)) from None


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    type: str
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    dimension: int | None = None

    def coerce(self, value: Any) -> Any:
        """Check ``value`` against the type. Nothing is cut silently: a string longer than
        ``max_length`` is an error (plans that only suit short queries say so in ``applies``)."""
        t = self.type
        if t == "string":
            if not isinstance(value, str):
                raise ParamError(f"{self.name}: expected a string, got {type(value).__name__}")
            if self.max_length and len(value) > self.max_length:
                raise ParamError(f"{self.name}: {len(value)} characters; the limit is {self.max_length}")
            return value
        if t in ("integer", "number"):
            try:
                finite = math.isfinite(value)
            except (TypeError, OverflowError):
                finite = False
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite:
                raise ParamError(f"{self.name}: expected a finite {t}, got {str(value)[:40]}")
            if t == "integer" and int(value) != value:
                raise ParamError(f"{self.name}: expected an integer, got {value!r}")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ParamError(f"{self.name}: {value} is outside [{self.min}, {self.max}]")
            return int(value) if t == "integer" else float(value)
        if t == "boolean":
            if not isinstance(value, bool):
                raise ParamError(f"{self.name}: expected true or false")
            return value
        if t == "object_list":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
                raise ParamError(f"{self.name}: expected a list of objects")
            return [dict(v) for v in value]
        if t == "vector":
            if not isinstance(value, (list, tuple, np.ndarray)) or (isinstance(value, np.ndarray) and value.ndim != 1):
                raise ParamError(f"{self.name}: expected a list of numbers, got {type(value).__name__}")
            if len(value) == 0:
                return []
            if not isinstance(value, np.ndarray) and any(isinstance(x, (str, bool, np.bool_)) for x in value):
                raise ParamError(f"{self.name}: expected a list of numbers")
            if isinstance(value, np.ndarray) and value.dtype.kind not in "fiu":
                raise ParamError(f"{self.name}: expected a list of numbers")
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise ParamError(f"{self.name}: expected a list of numbers") from None
            if arr.ndim != 1 or (self.dimension and arr.size != self.dimension):
                raise ParamError(f"{self.name}: expected {self.dimension or 'a list of'} numbers, got shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise ParamError(f"{self.name}: vector has non-finite values")
            # Six decimals keep cosine exact to ~1e-6 and halve the JSON the node must parse (values
            # near the float limit would overflow the rounding: they are no embedding anyway).
            if np.abs(arr).max() > 1e300:
                raise ParamError(f"{self.name}: vector values beyond ±1e300")
            return np.round(arr, 6).tolist()
        if t == "key":
            if value is None or (isinstance(value, str) and value == ""):
                return ""
            if not isinstance(value, str) or not _KEY_RE.match(value):
                raise ParamError(f"{self.name}: {value!r} is not a query key (q_ + 16 hex digits)")
            return value
        raise ParamError(f"{self.name}: unknown type {t}")


@dataclass(frozen=True, slots=True)
class Applicability:
    """When a plan applies, decided before it runs (and, with the bandit, before it is chosen).

    YAML (all optional)::

        applies:
          nonempty: [query]        # these inputs must not be empty (no slots -> no structured arm)
          max_query_tokens: 6      # longer queries are prose, not what this plan is for
          needs_fields: [title]    # some document of the catalogue must hold these fields
    """

    nonempty: tuple[str, ...] = ()
    max_query_tokens: int | None = None
    needs_fields: tuple[str, ...] = ()


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0)


@dataclass(frozen=True)
class QueryPlan:
    """One retrieval strategy: a validated query_plans/*.yaml file."""

    id: str
    description: str
    template: str
    params: tuple[ParamSpec, ...]
    fields: tuple[str, ...] = ()
    cost: float = 1.0
    applies: Applicability = Applicability()
    example: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""
    target: str = "catalogue"  # YAML `index:`, one of TARGETS; the pipeline routes the call there

    @property
    def digest(self) -> str:
        payload = json.dumps({"t": self.template, "p": [p.name for p in self.params]}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:8]

    @property
    def script_id(self) -> str:
        return f"ltrr-{self.id}-{self.digest}"

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def why_not_applicable(self, values: Mapping[str, Any], *, query_tokens: int,
                           catalogue_fields: Mapping[str, int] | None = None) -> str | None:
        """Why this plan does not apply to a query with these input ``values`` and ``query_tokens``
        tokens on a catalogue whose documents hold ``catalogue_fields`` (field -> documents; None
        when unknown); None when it applies. See :class:`Applicability`."""
        rules = self.applies
        for name in rules.nonempty:
            if _empty(values.get(name)):
                return f"no {name} for this query"
        if rules.max_query_tokens is not None and query_tokens > rules.max_query_tokens:
            return f"query has {query_tokens} tokens; this plan is for at most {rules.max_query_tokens}"
        for p in self.params:  # an input the plan cannot take whole: not applicable, never cut
            value = values.get(p.name)
            if p.max_length and isinstance(value, str) and len(value) > p.max_length:
                return f"{p.name} has {len(value)} characters; this plan takes at most {p.max_length}"
        if catalogue_fields is not None:
            missing = [f for f in rules.needs_fields if not catalogue_fields.get(f)]
            if missing:
                return f"no document of the catalogue has {', '.join(missing)}"
        return None

    def build_params(self, values: Mapping[str, Any], *, timeout_ms: int) -> dict[str, Any] | None:
        """Typed, defaulted parameters for a search; None when an ``applies.nonempty`` input is
        empty (the plan does not apply to this query, e.g. ``structured`` without slots)."""
        unknown = set(values) - {p.name for p in self.params}
        if unknown:
            raise ParamError(f"{self.id}: unknown parameters {sorted(unknown)}")
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in values and values[p.name] is not None:
                out[p.name] = p.coerce(values[p.name])
            elif p.default is not None:
                out[p.name] = p.coerce(p.default)
            elif p.required or p.type in ("integer", "number", "boolean"):
                raise ParamError(f"{self.id}: parameter {p.name!r} is required")
            else:  # absent text or list: empty (applies.nonempty then decides whether the plan runs)
                out[p.name] = p.coerce("" if p.type in ("string", "key") else [])
        if any(_empty(out.get(name)) for name in self.applies.nonempty):
            return None
        if not isinstance(timeout_ms, int) or not 1 <= timeout_ms <= 600_000:
            raise ParamError(f"timeout must be 1..600000 ms, got {timeout_ms!r}")
        out[TIMEOUT_PARAM] = f"{timeout_ms}ms"
        return out

    def example_params(self, dim_hint: int = 384) -> dict[str, Any]:
        """The plan's ``example`` with placeholders for what it leaves out, so that the example
        always makes the plan applicable (``zeros`` is YAML shorthand for a vector)."""
        values = dict(self.example)
        for spec in self.params:
            value = values.get(spec.name)
            if value == "zeros" or (value is None and spec.type == "vector"):
                values[spec.name] = [0.01] * (spec.dimension or dim_hint)
            elif value is None and spec.default is None:
                placeholder = {"string": "example", "key": "q_0000000000000000",
                               "object_list": [{"match_all": {}}]}.get(spec.type)
                if placeholder is not None:
                    values[spec.name] = placeholder
        return values


def _parse_param(plan_file: str, name: str, raw: Any) -> ParamSpec:
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise PlanError(f"{plan_file}: parameter {name!r} needs a mapping with a type")
    unknown = set(raw) - {"type", "default", "required", "min", "max", "max_length", "dimension"}
    if unknown:
        raise PlanError(f"{plan_file}: parameter {name!r} has unknown keys {sorted(unknown)}")
    if raw["type"] not in PARAM_TYPES:
        raise PlanError(f"{plan_file}: parameter {name!r} has type {raw['type']!r}; use one of {PARAM_TYPES}")
    spec = ParamSpec(name=name, type=raw["type"], default=raw.get("default"), required=bool(raw.get("required", False)),
                     min=raw.get("min"), max=raw.get("max"), max_length=raw.get("max_length"),
                     dimension=raw.get("dimension"))
    if spec.default is not None:
        try:
            spec.coerce(spec.default)
        except ParamError as e:
            raise PlanError(f"{plan_file}: default of {name!r} is invalid: {e}") from None
    return spec


_PLAIN_TAG_RE = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
_TOJSON_RE = re.compile(r"\{\{#toJson\}\}\s*([A-Za-z_][A-Za-z0-9_]*)\s*\{\{/toJson\}\}")


def check_template(plan: QueryPlan) -> None:
    """Enforce the escaping rules: each declared parameter is used, each used name is declared;
    strings and keys only inside JSON quotes; lists, objects and vectors only via toJson (and not
    quoted); numbers and booleans bare (they are type-checked before sending)."""
    declared = {p.name: p for p in plan.params}
    used: set[str] = set()
    template = plan.template
    for m in _TOJSON_RE.finditer(template):
        name = m.group(1)
        p = declared.get(name)
        if p is None:
            raise PlanError(f"{plan.path}: template uses toJson on {name!r} but no such parameter is declared")
        if p.type not in ("object_list", "vector"):
            raise PlanError(f"{plan.path}: toJson is for lists and objects; {name!r} is a {p.type}")
        if _inside_json_string(template[: m.start()]):
            raise PlanError(f"{plan.path}: toJson of {name!r} must not be quoted")
        used.add(name)
    rest = _TOJSON_RE.sub(" 0 ", template)
    # Every other tag must be a plain {{name}}: triple mustaches and {{&name}} skip escaping,
    # {{=...=}} changes delimiters, partials, comments and sections change the structure.
    for start in (i for i in range(len(rest)) if rest.startswith("{{", i)):
        if start > 0 and rest[start - 1] == "{" and not rest.startswith("{{", start - 1):
            continue  # the second brace of a "{{" already checked
        if (start > 0 and rest[start - 1] == "{") or not _PLAIN_TAG_RE.match(rest, start):
            snippet = rest[start:start + 24].split("\n")[0]
            raise PlanError(f"{plan.path}: unsupported mustache tag at {snippet!r}: only {{{{name}}}} and "
                            "{{#toJson}}name{{/toJson}} are allowed")
    for m in _TAG_RE.finditer(rest):
        kind, name = m.group(1), m.group(2)
        if kind:
            raise PlanError(f"{plan.path}: sections ({{{{{kind}{name}}}}}) are not allowed; use toJson for lists")
        if name != TIMEOUT_PARAM and name not in declared:
            raise PlanError(f"{plan.path}: template uses {{{{{name}}}}} but no such parameter is declared")
        used.add(name)
        ptype = declared[name].type if name in declared else "string"  # timeout renders as "250ms"
        in_quotes = _inside_json_string(rest[: m.start()])
        if ptype in ("string", "key"):
            if not in_quotes:
                raise PlanError(f"{plan.path}: string parameter {name!r} must sit inside JSON quotes")
        elif ptype in ("object_list", "vector"):
            raise PlanError(f"{plan.path}: {ptype} parameter {name!r} must be rendered with {{{{#toJson}}}}")
        elif in_quotes:
            raise PlanError(f"{plan.path}: {ptype} parameter {name!r} must not be quoted")
    missing = set(declared) - used
    if missing:
        raise PlanError(f"{plan.path}: parameters declared but not used: {sorted(missing)}")
    if TIMEOUT_PARAM not in used:
        raise PlanError(f'{plan.path}: the template must set "timeout": "{{{{timeout}}}}" (per-strategy timeout)')


def _inside_json_string(prefix: str) -> bool:
    """Whether the end of ``prefix`` is inside a JSON string literal (mustache tags skipped)."""
    text = _TAG_RE.sub("", prefix)
    inside = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = inside
        elif ch == '"':
            inside = not inside
    return inside


def _parse_applies(plan_file: str, raw: Any) -> Applicability:
    if raw is None:
        return Applicability()
    if not isinstance(raw, Mapping):
        raise PlanError(f"{plan_file}: applies must be a mapping")
    unknown = set(raw) - {"nonempty", "max_query_tokens", "needs_fields"}
    if unknown:
        raise PlanError(f"{plan_file}: applies has unknown keys {sorted(unknown)}")
    max_tokens = raw.get("max_query_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise PlanError(f"{plan_file}: applies.max_query_tokens must be an integer >= 1")
    lists = {}
    for key in ("nonempty", "needs_fields"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PlanError(f"{plan_file}: applies.{key} must be a list of names")
        lists[key] = tuple(value)
    return Applicability(lists["nonempty"], max_tokens, lists["needs_fields"])


def load_plan(path: Path) -> QueryPlan:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PlanError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, Mapping):
        raise PlanError(f"{path}: expected a mapping")
    allowed = {"id", "description", "cost", "fields", "params", "applies", "example", "template", "index"}
    unknown = set(raw) - allowed
    if unknown:
        raise PlanError(f"{path}: unknown keys {sorted(unknown)}")
    for key in ("id", "template", "params"):
        if key not in raw:
            raise PlanError(f"{path}: missing {key!r}")
    if not _PLAN_ID_RE.match(str(raw["id"])):
        raise PlanError(f"{path}: id {raw['id']!r} must be lowercase letters, digits and _")
    if path.stem != raw["id"]:
        raise PlanError(f"{path}: file name must equal the id ({raw['id']}.yaml)")
    target = raw.get("index", "catalogue")
    if target not in TARGETS:
        raise PlanError(f"{path}: index must be one of {TARGETS}, got {target!r}")
    params = tuple(_parse_param(str(path), name, spec) for name, spec in (raw["params"] or {}).items())
    if any(p.name == TIMEOUT_PARAM for p in params):
        raise PlanError(f"{path}: {TIMEOUT_PARAM!r} is reserved (set per search)")
    plan = QueryPlan(
        id=raw["id"], description=" ".join(str(raw.get("description", "")).split()), template=str(raw["template"]),
        params=params, fields=tuple(raw.get("fields", ())), cost=float(raw.get("cost", 1.0)),
        applies=_parse_applies(str(path), raw.get("applies")), example=raw.get("example") or {}, path=str(path),
        target=target)
    if plan.cost <= 0:
        raise PlanError(f"{path}: cost must be positive")
    for name in plan.applies.nonempty:
        if name not in {p.name for p in params}:
            raise PlanError(f"{path}: applies.nonempty names unknown parameter {name!r}")
    check_template(plan)
    return plan


def load_plans(directory: Path | None = None) -> dict[str, QueryPlan]:
    directory = directory or plans_dir()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PlanError(f"no query plans in {directory}")
    plans = {}
    for path in files:
        plan = load_plan(path)
        plans[plan.id] = plan
    return plans


@dataclass(frozen=True)
class SyncResult:
    plan: str
    script_id: str
    created: bool
    rendered_ok: bool
    error: str | None = None


def sync_plans(client: OpenSearch, plans: Mapping[str, QueryPlan]) -> list[SyncResult]:
    """Store every plan's template (idempotent) and validate it by rendering its example."""
    results = []
    for plan in plans.values():
        created = False
        try:
            client.get_script(id=plan.script_id)
        except NotFoundError:
            client.put_script(id=plan.script_id, body={"script": {"lang": "mustache", "source": plan.template}})
            created = True
        try:
            params = plan.build_params(plan.example_params(), timeout_ms=1000)
            if params is None:
                raise PlanError("the example leaves an applies.nonempty parameter empty")
            try:
                rendered = client.render_search_template(id=plan.script_id, body={"params": params})
            except SerializationError:
                raise PlanError("the template renders to invalid JSON with the example parameters") from None
            output = rendered["template_output"]
            if not isinstance(output, Mapping) or "query" not in output:
                raise PlanError("rendered template has no query")
            results.append(SyncResult(plan.id, plan.script_id, created, True))
        except (TransportError, PlanError, ParamError) as e:
            results.append(SyncResult(plan.id, plan.script_id, created, False, str(e)))
    return results


# ------------------------------------------------------------------------------------------------
# Execution: one _msearch/template for all chosen strategies
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StrategyCall:
    """One strategy to run: which plan, how many candidates, and its parameter values.
    ``index``: where this call searches when not the run's index (a memory plan: ``<alias>-q2e``)."""

    plan: str
    budget: int
    params: Mapping[str, Any]
    timeout_ms: int = 1000
    index: str | None = None


@dataclass(frozen=True)
class ExecutionReport:
    results: tuple[StrategyResult, ...]
    wall_ms: float            # the whole round trip as seen from here
    max_took_ms: float        # the slowest strategy as OpenSearch measured it
    round_trips: int
    took_ms: float = 0.0      # the whole _msearch as OpenSearch measured it (top-level took)


class StrategyExecutor:
    """Runs strategy calls against an index. Failures are per strategy: a failing, timed-out or
    inapplicable strategy yields an empty result with ``error`` set while the others are served."""

    # The _msearch's request timeout is the search's deadline: the slowest strategy's timeout plus
    # this margin (the node's own "timeout" stops collecting at the strategy timeout; the margin
    # covers the reduce and the network). Give the executor a client without retries
    # (make_client(retries=False)), or a retry would start the wait again.
    def __init__(self, client: OpenSearch, plans: Mapping[str, QueryPlan], *, margin_ms: int = 500):
        self.client = client
        self.plans = dict(plans)
        self.margin_ms = margin_ms

    def msearch_body(self, index: str, calls: Sequence[StrategyCall]) -> list[dict]:
        """The _msearch/template body ``run`` would send (for benchmarks and debugging)."""
        return self._prepare(index, calls)[1]

    def _prepare(self, index: str, calls: Sequence[StrategyCall]
                 ) -> tuple[list[StrategyResult | None], list[dict], list[int]]:
        """Results for the calls that need no request, the body for the others, and their positions."""
        results: list[StrategyResult | None] = [None] * len(calls)
        body: list[dict] = []
        sent: list[int] = []
        for i, call in enumerate(calls):
            plan = self.plans.get(call.plan)
            if plan is None:
                results[i] = StrategyResult.failed(call.plan, call.budget, f"unknown strategy {call.plan!r}")
                continue
            try:
                params = plan.build_params({**call.params, "size": call.budget}, timeout_ms=call.timeout_ms)
            except (ParamError, TypeError, ValueError) as e:
                results[i] = StrategyResult.failed(call.plan, call.budget, f"bad parameters: {e}")
                continue
            if params is None:
                results[i] = StrategyResult.not_applicable(call.plan, call.budget, NOT_APPLICABLE)
                continue
            body.append({"index": call.index or index})
            body.append({"id": plan.script_id, "params": params})
            sent.append(i)
        return results, body, sent

    def run(self, index: str, calls: Sequence[StrategyCall]) -> ExecutionReport:
        results, body, sent = self._prepare(index, calls)
        t0 = time.perf_counter()
        round_trips = 0
        total_took = 0.0
        if sent:
            round_trips = 1
            timeout_s = (max(calls[i].timeout_ms for i in sent) + self.margin_ms) / 1000
            try:
                resp = self.client.msearch_template(
                    body=body, params={"filter_path": MSEARCH_FILTER_PATH, "request_timeout": timeout_s})
                responses = resp.get("responses", [])
                total_took = float(resp.get("took", 0))
            except (OSConnectionError, ConnectionTimeout) as e:
                responses = [{"error": {"type": "connection_error", "reason": str(e)[:300]}}] * len(sent)
            except TransportError as e:
                responses = [{"error": {"type": "request_error", "reason": str(e)[:300]}}] * len(sent)
            for i, response in zip(sent, responses):
                results[i] = _to_result(calls[i], response)
        wall_ms = (time.perf_counter() - t0) * 1000
        final = tuple(r for r in results if r is not None)
        max_took = max((r.took_ms or 0.0 for r in final), default=0.0)
        return ExecutionReport(final, wall_ms, max_took, round_trips, total_took or max_took)


_MISSING_SCRIPT_RE = re.compile(r"unable to find script \[([^\]]{1,200})\]")
_NONE_RENDERED = "no requests added"


def _to_result(call: StrategyCall, response: Mapping[str, Any]) -> StrategyResult:
    if "error" in response:
        err = response["error"]
        if isinstance(err, Mapping):
            cause = (err.get("root_cause") or [err])[0]
            reason = f"{cause.get('type', 'error')}: {cause.get('reason', '')}"[:500]
            missing = _MISSING_SCRIPT_RE.search(str(cause.get("reason", "")))
            if missing and cause.get("type") == "resource_not_found_exception":
                reason = f"stored script {missing.group(1)} not found: run `ltrr plans sync`"
            elif _NONE_RENDERED in str(cause.get("reason", "")):
                # When no template of the _msearch resolves, OpenSearch fails the whole request
                # this way instead of answering each item with its own error.
                reason = ("OpenSearch rendered none of the strategies (stored scripts missing?): run "
                          f"`ltrr plans sync`. {reason}")[:500]
        else:
            reason = str(err)[:500]
        return StrategyResult.failed(call.plan, call.budget, reason)
    took = float(response.get("took", 0))
    if response.get("timed_out"):
        return StrategyResult(call.plan, (), call.budget, took, ArmStatus.TIMED_OUT, f"timed out after {call.timeout_ms} ms")
    shards = response.get("_shards", {})
    if shards.get("failed"):
        failure = (shards.get("failures") or [{}])[0].get("reason", {})
        return StrategyResult.failed(call.plan, call.budget, f"shard failure: {failure.get('type', '')}: "
                                     f"{failure.get('reason', '')}"[:500], took)
    hits = tuple(Hit(h["_id"], rank, float(h.get("_score") or 0.0))
                 for rank, h in enumerate(response.get("hits", {}).get("hits", [])[: call.budget], start=1))
    return StrategyResult(call.plan, hits, call.budget, took)


def missing_scripts(client: OpenSearch, plans: Sequence[QueryPlan]) -> list[str]:
    """Script ids of ``plans`` not stored in the cluster (a read: one get_script per plan)."""
    missing = []
    for plan in plans:
        try:
            client.get_script(id=plan.script_id)
        except NotFoundError:
            missing.append(plan.script_id)
    return missing
