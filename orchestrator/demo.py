"""``ltrr demo``: learning to rank and retrieve, end to end, on a catalogue that needs no data files.

1. **Catalogue**: generate the synthetic music catalogue (or take a BEIR dataset, ``dataset_dir``)
   and load it with embeddings under ``alias``; a later run whose dataset is unchanged reuses the
   loaded index (its mapping's ``_meta.ltrr`` records the dataset's fingerprint and documents).
2. **Plans**: store the query plans as search templates.
3. **Candidates**: a simulated query stream over the judged queries (:mod:`.simulate.stream`);
   each arm's hits of every query text, fetched once at the largest budget (cached on disk).
4. **First ranker**: the LTR plugin logs the features of each text's full union (cached on disk);
   XGBoost LambdaMART is trained on the judged queries (the synthetic catalogue's generated
   judgments, or the dataset's qrels), cross-validated by query, uploaded to the plugin and made
   the catalogue's active model (kept when a later run trains on the same data).
5. **Learning to retrieve**: the joint bandit, per-arm LinUCB and uniform random beside every
   static arm and all arms together, on the same simulated users (common random numbers). Users
   see each policy's fused top 10, as in ``ltrr simulate`` (``display="reranked"``: the reranked
   top 10); either way every policy's candidates are also *reranked by the first ranker* and
   measured (nDCG@10 after the rerank). The rerank is computed locally with the plugin's model and
   the plugin's logged features (:mod:`.simulate.rerank`), by a model that did not see the query's
   judgments (cross-fitting).
6. **Real searches**: a sample of the stream through the real pipeline (the learned bandit chooses
   the arms, the plugin reranks): latency per stage, and the local rerank checked against the
   plugin's order on the same candidates.
7. The comparison, the goals measured in this run, what the bandit learned per intent, and a
   report (HTML + Markdown with plots, :mod:`.report`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .catalog import CatalogError, check_alias
from .config import ConnectionSettings, ltrr_home
from .reporting import ReportTable, bootstrap_mean_interval, fmt, goal_table, intent_table, policy_table

RESULT_KIND = "ltrr-demo"
RESULT_FORMAT = 1
LEARNER = "joint"
REWARD_GOAL = 1.10  # the bandit's clicks / the best static arm's
COST_GOAL = 0.60  # the bandit's documents / all arms'
NDCG_GOAL = 1.15  # LTR&R's nDCG@10 / the best single arm's alone
# One thread: on a busy 2-core machine XGBoost's default threads made training 3-8x slower.
TRAIN_PARAMS = {"nthread": 1}
STAGES = ("understand", "embed", "decide", "opensearch", "execute overhead", "fusion", "rerank", "total")


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs. ``dataset_dir``: a BEIR-layout dataset to use instead of generating the
    synthetic catalogue (``docs``, ``queries`` and ``seed`` are then unused); ``out_dir``: where
    caches, results and the report go (default ``$LTRR_HOME/demo/<alias>``); ``alias`` defaults to
    ``synthetic_music``, or the dataset's name with ``dataset_dir``."""

    docs: int = 20_000
    queries: int = 300
    seed: int = 1
    searches: int = 5_000
    sim_seed: int = 0
    alias: str | None = None
    dataset_dir: Path | None = None
    out_dir: Path | None = None
    policies: tuple[str, ...] = (LEARNER, "linucb", "random")
    real_searches: int = 200
    folds: int = 5
    window: int = 200
    budget: int = 100
    levels: tuple[int, ...] = (20, 50, 100)
    max_arms: int = 2
    # What the model sees of the query vector: "always" (as SearchPipeline.search serves with a
    # reranker: it encodes the query for the rerank whichever arms ran) or "vector-arms-only" (only
    # when an arm that takes the vector ran: how ltrr served before, kept for comparison).
    rerank_vector: str = "always"
    # What simulated users see: the fused top 10 ("fused", the simulator's world, in which the bandit
    # was tuned) or the reranked top 10 ("reranked", what serving shows); the rerank is measured either way.
    display: str = "fused"

    def __post_init__(self) -> None:
        def integer(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise DemoError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

        integer("docs", 10, 10_000_000)
        integer("queries", 10, 1_000_000)
        integer("searches", 10, 1_000_000)
        integer("real_searches", 0, 100_000)
        integer("folds", 2, 20)
        integer("window", 10, 10_000)
        integer("budget", 1, 1000)
        integer("max_arms", 1, 20)
        if self.queries < self.folds:
            raise DemoError(f"queries ({self.queries}) must be at least folds ({self.folds})")
        if not self.policies or self.policies[0] != LEARNER:
            raise DemoError(f"the first policy must be {LEARNER!r} (the learner the goals are measured on)")
        if not self.levels or any(not 1 <= lv <= 1000 for lv in self.levels):
            raise DemoError(f"levels must be budgets in [1, 1000], got {self.levels!r}")
        if self.display not in ("fused", "reranked"):
            raise DemoError(f"display must be 'fused' or 'reranked', got {self.display!r}")
        if self.rerank_vector not in ("always", "vector-arms-only"):
            raise DemoError(f"rerank_vector must be 'always' or 'vector-arms-only', got {self.rerank_vector!r}")
        if self.dataset_dir is not None and not Path(self.dataset_dir).is_dir():
            raise DemoError(f"dataset directory not found: {self.dataset_dir}")
        if self.alias is None:
            object.__setattr__(self, "alias", _default_alias(self.dataset_dir))
        try:
            check_alias(str(self.alias))
        except CatalogError as e:
            raise DemoError(str(e)) from None

    @property
    def index(self) -> str:
        """The catalogue alias."""
        return str(self.alias)

    @property
    def out(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else ltrr_home() / "demo" / self.index

    @property
    def specs(self) -> tuple[str, ...]:
        return self.policies


def _default_alias(dataset_dir: Path | None) -> str:
    if dataset_dir is None:
        return "synthetic_music"
    from .catalog import default_alias
    from .datasets import Dataset, DatasetSpecError

    try:
        return default_alias(Dataset.open(dataset_dir).spec.name)
    except (DatasetSpecError, FileNotFoundError) as e:
        raise DemoError(str(e)) from None


def _keep_only(directory: Path, prefix: str, current: Path) -> None:
    """Delete the caches of earlier index versions or plan sets (``prefix*``) but ``current``."""
    for stale in directory.glob(f"{prefix}*"):
        if stale != current:
            stale.unlink(missing_ok=True)


def vector_arms(plans: Mapping[str, Any]) -> list[str]:
    """The plans that take the query vector: running one of them is what makes serving encode the query."""
    return [name for name, plan in plans.items() if any(p.type == "vector" for p in plan.params)]


@dataclass
class _Steps:
    """Wall time per step, shown as it goes and kept in the result."""

    console: Console
    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def step(self, number: int, name: str, what: str) -> Iterator[None]:
        self.console.print(f"[bold]{number}. {name}[/] {what}")
        t0 = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t0, 2)
        self.console.print(f"   [dim]{self.seconds[name]:.1f}s[/]")


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("   [progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def dataset_fingerprint(root: Path, embedded_with: str) -> str:
    """sha256 of the dataset's corpus and spec files and of how documents were embedded."""
    digest = hashlib.sha256(embedded_with.encode())
    for name in ("corpus.jsonl", "dataset.yaml"):
        path = root / name
        if path.exists():
            digest.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def _index_meta(client: Any, index: str) -> dict[str, Any]:
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    return dict(mapping.get("_meta", {}).get("ltrr", {}))


def _record_meta(client: Any, index: str, **values: Any) -> None:
    """Merge ``values`` into the index mapping's ``_meta.ltrr`` (the loader keeps its facts there)."""
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    meta = dict(mapping.get("_meta", {}))
    meta["ltrr"] = {**meta.get("ltrr", {}), **values}
    client.indices.put_mapping(index=index, body={"_meta": meta})


def loaded_index(client: Any, alias: str, fingerprint: str) -> tuple[str, int] | None:
    """``(index, documents)`` when ``alias`` serves an index loaded from the dataset with this
    fingerprint and still holding every document it was loaded with; else None."""
    if not client.indices.exists_alias(name=alias):
        return None
    index = next(iter(client.indices.get_alias(name=alias)))
    meta = _index_meta(client, index)
    docs = int(client.count(index=index)["count"])
    if meta.get("dataset_fingerprint") != fingerprint or meta.get("dataset_documents") != docs:
        return None
    return index, docs


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "mean": None}
    x = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)), "mean": float(x.mean())}


def _stage_times(timings: Any) -> dict[str, float]:
    """A search's time per stage (ms): OpenSearch is its ``took``; "execute overhead" is the rest
    of the round trip (client, network, parsing); rerank is the whole rerank request."""
    return {"understand": timings.understand_ms, "embed": timings.embed_ms, "decide": timings.decide_ms,
            "opensearch": timings.opensearch_took_ms,
            "execute overhead": max(timings.execute_wall_ms - timings.opensearch_took_ms, 0.0),
            "fusion": timings.fusion_ms, "rerank": timings.rerank_wall_ms, "total": timings.total_ms}


def policy_rows(result: Any, sim_doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The demo's numbers per policy: the simulation's totals plus nDCG@10 intervals (bootstrap
    over queries: a query's searches are not independent)."""
    queries = [s.query.id for s in result.stream.searches]
    rows = []
    for spec, entry in sim_doc["policies"].items():
        final = entry["final"]
        run = result.runs[spec]
        row: dict[str, Any] = {
            "policy": spec, "reward_per_search": final["reward_per_search"],
            "reward_vs_best_static": final.get("reward_vs_best_static"), "success_rate": final["success_rate"],
            "candidate_recall": final["candidate_recall"], "ndcg10_fused": final["ndcg10_fused"],
            "ndcg10_reranked": final.get("ndcg10_reranked"), "requested_per_search": final["requested_per_search"],
            "requested_vs_all": final.get("requested_vs_all"), "time_ms_per_search": final["time_ms_per_search"],
            "time_vs_all": final.get("time_vs_all"), "regret": final["regret"],
            "regret_late_over_early": final["regret_growth"]["late_over_early"]}
        for name, values in (("ndcg10_fused", run.ndcg_fused), ("ndcg10_reranked", run.ndcg_reranked)):
            if np.isfinite(values).all():
                _mean, low, high = bootstrap_mean_interval(values, queries, resamples=1000)
                row[f"{name}_interval"] = [low, high]
        rows.append(row)
    return rows


def measure_goals(rows: Sequence[Mapping[str, Any]], best_static: str | None, learner: str = LEARNER
                  ) -> list[dict[str, Any]]:
    """The issue's three goals, measured on ``rows`` (:func:`policy_rows`) of one run."""
    by = {r["policy"]: r for r in rows}
    me = by.get(learner, {})
    singles = [r for r in rows if r["policy"].startswith("static:") and "+" not in r["policy"]]
    best_ndcg = max(singles, key=lambda r: r["ndcg10_fused"], default=None)
    reward = me.get("reward_vs_best_static")
    cost = me.get("requested_vs_all")
    ndcg = None
    if best_ndcg is not None and me.get("ndcg10_reranked") is not None and best_ndcg["ndcg10_fused"] > 0:
        ndcg = me["ndcg10_reranked"] / best_ndcg["ndcg10_fused"]
    time_ratio = me.get("time_vs_all")
    return [
        {"goal": f"reward: {learner} / best static arm", "measured": reward, "threshold": REWARD_GOAL,
         "comparison": ">=", "passed": None if reward is None else reward >= REWARD_GOAL,
         "detail": f"clicks per search vs {best_static} (the single arm with the most clicks, shown the same way)"},
        {"goal": f"cost: {learner} / all arms (documents)", "measured": cost, "threshold": COST_GOAL,
         "comparison": "<=", "passed": None if cost is None else cost <= COST_GOAL,
         "detail": "documents requested from OpenSearch" + (
             f"; modelled OpenSearch time {time_ratio:.3f}x" if time_ratio is not None else "")},
        {"goal": f"nDCG@10: {learner} + rerank / best single arm alone", "measured": ndcg, "threshold": NDCG_GOAL,
         "comparison": ">=", "passed": None if ndcg is None else ndcg >= NDCG_GOAL,
         "detail": (f"vs {best_ndcg['policy']} in its own order ({best_ndcg['ndcg10_fused']:.3f})"
                    if best_ndcg is not None else "no single arm ran")},
    ]


def _ordered(specs: Sequence[str]) -> list[str]:
    """Learners first (as given), then static arms, then all."""
    learners = [s for s in specs if not s.startswith("static:") and s not in ("all", "random")]
    return [*learners, *(s for s in specs if s == "random"), *(s for s in specs if s.startswith("static:")),
            *(s for s in specs if s == "all")]


def run_demo(console: Console, config: DemoConfig | None = None, *, ensure_node: Callable[[], None] | None = None,
             write_report: bool = True) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the result document (also written as
    ``<out>/results.json``, with the report beside it)."""
    from .client import make_client
    from .embeddings import EmbeddingCache, SentenceEncoder

    config = config or DemoConfig()
    started_at = datetime.now(UTC)
    steps = _Steps(console)
    settings = ConnectionSettings.from_env()
    if ensure_node is not None and settings.is_local:
        ensure_node()
    client = make_client(settings, retries=False)  # the loader retries itself; searches hold their deadline
    out = config.out
    cache_dir = out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    reused: dict[str, Any] = {}
    encoder = SentenceEncoder()
    embedding_cache = EmbeddingCache.for_encoder(encoder)

    with steps.step(1, "catalogue", "the dataset, loaded with all-MiniLM-L6-v2 embeddings"):
        dataset, index, documents = _catalogue(console, client, config, encoder, embedding_cache, reused)
    with steps.step(2, "plans", "the query plans stored as search templates"):
        from .strategies import load_plans, sync_plans

        plans = load_plans()
        synced = sync_plans(client, plans)
        bad = [r for r in synced if not r.rendered_ok]
        if bad:
            raise DemoError(f"plan {bad[0].plan} does not render: {bad[0].error}")
        console.print("   " + ", ".join(f"{r.plan} ({r.script_id})" for r in synced))

    from .bandit.base import BudgetConfig
    from .bandit.policies import make_policy
    from .evaluate import judged_queries
    from .pipeline import SearchPipeline
    from .simulate.candidates import CandidateCache, CandidateCacheError
    from .simulate.clicks import make_click_model
    from .simulate.command import sim_queries
    from .simulate.runner import SimulationConfig, build_policies, run_simulation
    from .simulate.stream import StreamConfig, build_stream, document_frequency

    pipe = SearchPipeline(client, config.index, plans, encoder=encoder)
    arms = tuple(pipe.plans)
    splits = dataset.splits()
    split = "test" if "test" in splits else (splits[0] if splits else None)
    if split is None:
        raise DemoError(f"{dataset.root} has no qrels: the demo needs judged queries")
    qrels = dataset.qrels(split)
    from .datasets import RowError

    queries, _skipped = judged_queries([q for q in dataset.iter_queries() if not isinstance(q, RowError)], qrels)
    if len(queries) < config.folds:
        raise DemoError(f"{len(queries)} judged queries: too few for the demo (at least {config.folds})")
    sim_qs = sim_queries(queries, qrels)

    with steps.step(3, "candidates", f"a stream of {config.searches} simulated searches; every arm's hits per text"):
        stream_config = StreamConfig(config.searches, seed=config.sim_seed)
        doc_frequency = None
        if "vocabulary" in stream_config.mix_for(any(q.intent is not None for q in sim_qs)):
            from .datasets import CorpusRow

            doc_frequency = document_frequency(f"{r.title} {r.text}" for r in dataset.iter_corpus()
                                               if isinstance(r, CorpusRow))
        stream = build_stream(sim_qs, stream_config, doc_frequency)
        texts = list(dict.fromkeys([*stream.texts, *(q.text for q in queries)]))
        max_level = max(config.levels)
        plan_ids = sorted(p.script_id for p in plans.values())
        cache_path = cache_dir / f"candidates-{_cache_key(index, plan_ids, max_level)}.json"
        cache = None
        if cache_path.exists():
            try:
                cache = CandidateCache.load(cache_path)
            except CandidateCacheError as e:
                console.print(f"   [yellow]ignoring {cache_path}: {escape(str(e))}[/]")
        todo = cache.covers(texts) if cache is not None else texts
        reused["candidates"] = f"{len(texts) - len(todo)} of {len(texts)} query texts cached"
        if todo:
            with _progress(console) as bar:
                task = bar.add_task(f"searching {len(todo)} query texts (every arm, {max_level} each)", total=len(todo))
                fetched = CandidateCache.from_pipeline(pipe, todo, max_level, levels=config.levels,
                                                       on_text=lambda: bar.advance(task))
            if cache is None:
                cache = fetched
            else:
                cache.queries.update(fetched.queries)
                cache.level_time = cache.level_time or fetched.level_time
            cache.save(cache_path)
            _keep_only(cache_dir, "candidates-", cache_path)
        assert cache is not None
        console.print(f"   {len(stream.texts)} distinct texts in the stream ({reused['candidates']})")

    ltr = "opensearch-ltr" in {row["component"] for row in client.cat.plugins(params={"format": "json"})}
    training: dict[str, Any] = {}
    reranker = None
    production = None
    feature_set = None
    features: dict[str, Any] = {}
    if not ltr:
        console.print("[yellow]   the cluster has no opensearch-ltr plugin: no ranker is trained and users see the "
                      "fused lists (see the README: LTRR_LTR_PLUGIN_ZIP, ltrr node reinstall)[/]")
    else:
        with steps.step(4, "first ranker", "features logged by the LTR plugin, LambdaMART trained on the judgments"):
            feature_set, features, reranker, production, training = _train(
                console, pipe, config, cache, texts, queries, qrels, index, cache_dir, reused)

    specs = _ordered([*config.specs, *(f"static:{a}" for a in arms), "all"])
    budget = BudgetConfig(total=config.budget, levels=tuple(sorted(config.levels)), max_arms=config.max_arms,
                          costs={name: plan.cost for name, plan in pipe.plans.items()})
    policies = build_policies(specs, arms, budget, config.sim_seed, make_policy)
    display = config.display if reranker is not None else "fused"
    with steps.step(5, "learning to retrieve", f"{config.searches} searches x {len(policies)} policies, users see "
                    + ("the reranked lists" if display == "reranked" else "the fused lists")
                    + (", every list also reranked by the first ranker" if reranker is not None else "")):
        max_grade = max((g for q in sim_qs for g in q.grades.values()), default=1)
        with _progress(console) as bar:
            task = bar.add_task("simulating", total=config.searches)
            result = run_simulation(stream, cache, make_click_model("cascade", "navigational"), policies,
                                    SimulationConfig(budget=budget, display=display), max_grade=max_grade,
                                    on_search=lambda t: bar.advance(task), reranker=reranker)
        sim_doc = result.to_json({"dataset": dataset.spec.name, "index": config.index, "split": split,
                                  "queries": len(sim_qs), "cache": cache.summary()})

    latency: dict[str, Any] = {}
    rerank_check: dict[str, Any] = {}
    if config.real_searches:
        with steps.step(6, "real searches", f"{min(config.real_searches, len(stream.searches))} searches of the stream "
                        "through the pipeline: the learned bandit chooses, the plugin reranks"):
            latency, rerank_check = _real_searches(console, pipe, config, stream, policies[LEARNER], production,
                                                   feature_set, features, arms, training.get("model"))

    rows = policy_rows(result, sim_doc)
    best_static = sim_doc.get("best_static")
    goals = measure_goals(rows, best_static)
    intents = dict(sim_doc["policies"][LEARNER]["by_intent"])
    intents["policy"] = LEARNER
    elapsed = time.monotonic() - steps.started
    doc: dict[str, Any] = {
        "kind": RESULT_KIND, "format": RESULT_FORMAT,
        "meta": {"dataset": dataset.spec.name, "dataset_dir": str(dataset.root), "alias": config.index, "index": index,
                 "documents": documents, "queries": len(queries), "searches": config.searches,
                 "seed": config.seed, "sim_seed": config.sim_seed, "display": display, "ltr": ltr,
                 "rerank_vector": config.rerank_vector,
                 "learner": LEARNER, "best_static": best_static, "arms": list(arms),
                 "started_at": started_at.isoformat(), "elapsed_seconds": round(elapsed, 1),
                 "steps": steps.seconds, "reused": reused, "cpus": os.cpu_count(),
                 "budget": {"total": config.budget, "levels": list(config.levels), "max_arms": config.max_arms},
                 "click_model": sim_doc["meta"]["click_model"]},
        "policies": rows, "goals": goals, "intents": intents, "training": training, "latency": latency,
        "rerank_check": rerank_check, "simulation": sim_doc,
        "notes": _notes(display, training, rerank_check, config.rerank_vector),
    }
    for table in demo_tables(doc):
        console.print(table.to_rich())
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.write_text(json.dumps(doc, indent=1, default=float))
    doc["meta"]["results"] = str(results_path)
    if write_report:
        from .report import write_report as write

        files = write(doc, out)
        doc["meta"]["report"] = {"html": str(files.html), "markdown": str(files.markdown)}
        results_path.write_text(json.dumps(doc, indent=1, default=float))
        console.print(f"report: [bold]{files.html}[/] (and {files.markdown.name}, {len(files.images)} plots)")
    console.print(f"results: {results_path}")
    console.print(f"done in {elapsed:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in steps.seconds.items()) + ")")
    return doc


def demo_tables(doc: Mapping[str, Any]) -> list[ReportTable]:
    """The demo's tables, for the terminal and the report."""
    meta = doc["meta"]
    reranked = meta.get("display") == "reranked"
    note = (f"{meta['searches']} searches on {meta['dataset']} ({meta['documents']} documents), "
            f"{meta['click_model'].get('model')} clicks on the "
            + ("reranked" if reranked else "fused") + " top 10; ratios to "
            f"{meta.get('best_static')} (clicks) and to all arms (cost); nDCG@10 intervals: bootstrap over queries")
    tables = [policy_table(doc["policies"], "per policy: reward, recall, nDCG@10, OpenSearch cost", note),
              goal_table(doc["goals"]), intent_table(doc["intents"], meta["arms"])]
    training = doc.get("training") or {}
    if training.get("folds"):
        rows = [(str(f["fold"]), str(f["train_queries"]), str(f["test_queries"]), fmt(f["union_ndcg10"], 4),
                 fmt(f["reranked_ndcg10"], 4),
                 fmt(f["reranked_ndcg10"] / f["union_ndcg10"] if f["union_ndcg10"] else None, 3, "x"))
                for f in training["folds"]]
        cv = training["cv"]
        rows.append(("mean", "", "", fmt(cv["union_ndcg10"], 4), fmt(cv["reranked_ndcg10"], 4),
                     fmt(cv["reranked_ndcg10"] / cv["union_ndcg10"] if cv["union_ndcg10"] else None, 3, "x")))
        tables.append(ReportTable(
            f"first ranker {training.get('model')}: {len(training['folds'])}-fold cross-validation by query "
            "(all arms' union, held-out nDCG@10)",
            ("fold", "train queries", "test queries", "union nDCG@10", "reranked nDCG@10", "ratio"), tuple(rows),
            "trained on " + str(training.get("labels", "judgments")) + ("; reused from an earlier run"
                                                                         if training.get("reused") else "")))
    latency = doc.get("latency") or {}
    if latency.get("stages"):
        rows = [(stage, fmt(v["p50"], 2), fmt(v["p95"], 2), fmt(v["mean"], 2)) for stage, v in latency["stages"].items()]
        check = doc.get("rerank_check") or {}
        note = ""
        if check.get("searches"):
            note = (f"local rerank vs the plugin on these searches: identical top 10 in {check['identical_top10']:.1%}, "
                    f"mean top-10 overlap {check['mean_overlap']:.3f}")
        tables.append(ReportTable(f"latency per stage (ms), {latency['searches']} real searches",
                                  ("stage", "p50", "p95", "mean"), tuple(rows), note))
    return tables


def _notes(display: str, training: Mapping[str, Any], check: Mapping[str, Any], rerank_vector: str) -> list[str]:
    notes = [
        f"Reward is clicks per search of a cascade user over the displayed ({display}) top 10 (graded qrels as "
        "attractiveness, stop after a satisfying click); every policy sees the same users and the same click draws.",
        "OpenSearch cost is the documents requested per search and the arms' modelled `took` (measured per arm "
        "and budget when the candidates were fetched); the rerank request, the same for every policy, is not in it.",
    ]
    if training:
        notes.append(
            "nDCG@10 after the rerank: each policy's candidates (the arms it ran, at its budgets) fused and their top "
            "200 reranked as serving does, computed locally: the plugin logs every query-document feature once per "
            "query text over the full union, the retrieval features (n_arms, fused_score, rrank_<arm>, q2e_memory) "
            "are recomputed for the arms the policy ran, and the uploaded XGBoost model scores them. Each query is "
            f"reranked by a model trained on the other {max(len(training.get('folds', [])) - 1, 1)} folds "
            "(cross-fitting), so no search is ranked by a model that saw its judgments.")
        notes.append(
            "The model always sees the query vector (dense_cosine), as SearchPipeline serves with a reranker"
            if rerank_vector == "always" else
            "The model sees the query vector (dense_cosine) only when an arm that takes it ran (--rerank-vector "
            "vector-arms-only; the real searches of the check still get it, as serving does)")
    if check.get("searches"):
        notes.append(f"Checked against the plugin on {check['searches']} real searches: identical top 10 in "
                     f"{check['identical_top10']:.1%} of them (mean overlap {check['mean_overlap']:.3f}).")
    return notes


def _catalogue(console: Console, client: Any, config: DemoConfig, encoder: Any, embedding_cache: Any,
               reused: dict[str, Any]) -> tuple[Any, str, int]:
    from .catalog import load_dataset
    from .datasets import Dataset
    from .synthetic import write_synthetic

    if config.dataset_dir is not None:
        root = Path(config.dataset_dir)
    else:
        root = ltrr_home() / "datasets" / f"synthetic_music-{config.docs}-{config.seed}-{config.queries}q"
        if not (root / "queries.jsonl").exists():
            console.print(f"   generating {config.docs} documents and {config.queries} queries in {root}")
            write_synthetic(root, config.docs, config.queries, config.seed)
    dataset = Dataset.open(root)
    fingerprint = dataset_fingerprint(root, f"{type(encoder).__name__}:{Path(str(encoder.model_dir)).name}")
    found = loaded_index(client, config.index, fingerprint)
    if found is not None:
        index, docs = found
        reused["index"] = True
        console.print(f"   reusing {config.index} -> {index}: {docs} documents, same dataset ({fingerprint})")
        return dataset, index, docs
    reused["index"] = False
    with _progress(console) as bar:
        task = bar.add_task(f"loading {dataset.spec.name}", total=None)
        report = load_dataset(client, dataset, alias=config.index, encoder=encoder, embedding_cache=embedding_cache,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    if not report.swapped:
        raise DemoError(f"loading {root} failed: {len(report.rejected)} rows rejected (first: "
                        f"{report.rejected[0] if report.rejected else 'none'}); run `ltrr load {root}` to see them all")
    _record_meta(client, report.index, dataset_fingerprint=fingerprint, dataset_documents=report.accepted)
    console.print(f"   {report.accepted} documents in {report.index} ({report.docs_per_second:.0f} docs/s; "
                  f"{report.embedded} embedded, {report.embed_cache_hits} vectors from the cache)")
    return dataset, report.index, report.accepted


def _train(console: Console, pipe: Any, config: DemoConfig, cache: Any, texts: Sequence[str], queries: Sequence[Any],
           qrels: Mapping[str, Mapping[str, int]], index: str, cache_dir: Path, reused: dict[str, Any]
           ) -> tuple[Any, dict[str, Any], Any, Any, dict[str, Any]]:
    """Log the union features, train the fold models and the production model, upload and
    activate it (unless the active model was trained on the same data)."""
    from .ltr.features import FeatureSetError, init_feature_set, load_feature_set
    from .ltr.model import ModelRegistry, to_plugin_definition, upload_model
    from .ltr.training import (
        DEFAULT_ROUNDS,
        FoldReport,
        folds,
        model_card,
        ndcg10,
        predict,
        train,
    )
    from .simulate.rerank import (
        LocalReranker,
        LocalRerankError,
        load_union_features,
        log_union_features,
        save_union_features,
        training_set,
    )

    try:
        feature_set = load_feature_set(list(pipe.plans))
    except FeatureSetError as e:
        raise DemoError(str(e)) from None
    init_feature_set(pipe.client, feature_set)
    path = cache_dir / f"features-{_cache_key(index, feature_set.name, cache.index, sorted(cache.arms))}.npz"
    features: dict[str, Any] = {}
    if path.exists():
        try:
            names, features, _meta = load_union_features(path)
            if tuple(names) != feature_set.names:
                features = {}
        except LocalRerankError as e:
            console.print(f"   [yellow]ignoring {path}: {escape(str(e))}[/]")
    todo = [t for t in texts if t not in features]
    reused["features"] = f"{len(texts) - len(todo)} of {len(texts)} query texts cached"
    if todo:
        with _progress(console) as bar:
            task = bar.add_task(f"logging features of {len(todo)} unions", total=len(todo))
            features.update(log_union_features(pipe, feature_set, cache, todo, on_batch=lambda n: bar.advance(task, n)))
        save_union_features(path, feature_set.names, features, {"index": index})
        _keep_only(cache_dir, "features-", path)
    data = training_set(feature_set, features, queries, qrels, config.window)
    t0 = time.monotonic()
    fold_of: dict[str, str] = {}
    models: dict[str, Any] = {}
    reports = []
    for i, held_out in enumerate(folds(data.query_ids, config.folds, seed=7), 1):
        test = set(held_out)
        booster = train(data.subset([q for q in data.query_ids if q not in test]), params=TRAIN_PARAMS)
        models[f"fold{i}"] = booster
        fold_of.update(dict.fromkeys(held_out, f"fold{i}"))
        fused, reranked = {}, {}
        for lq in data.queries:
            if lq.query_id in test:
                scores = predict(booster, lq, feature_set.names)
                fused[lq.query_id] = list(lq.doc_ids)
                reranked[lq.query_id] = [lq.doc_ids[j] for j in sorted(range(len(lq.doc_ids)), key=lambda j: (-scores[j], j))]
        reports.append(FoldReport(i, len(data.query_ids) - len(test), len(test), ndcg10(fused, qrels),
                                  ndcg10(reranked, qrels)))
    production = train(data, params=TRAIN_PARAMS)
    registry = ModelRegistry(pipe.client)
    active, card = registry.active(config.index)
    data_hash = data.data_hash()
    if active and card and card.get("data", {}).get("hash") == data_hash and card.get("feature_set") == feature_set.name:
        name, model_reused = active, True
    else:
        definition, shift = to_plugin_definition(production)
        name = f"{config.index}-{feature_set.digest}-{datetime.now(UTC):%Y%m%d%H%M%S}"
        upload_model(pipe.client, feature_set, name, definition)
        try:
            version = pipe.client.info()["version"]["number"]
        except Exception:  # the version only annotates the card
            version = None
        card = model_card(name, config.index, data, production, shift, params=TRAIN_PARAMS, rounds=DEFAULT_ROUNDS,
                          folds_report=reports, window=config.window, node_version=version,
                          seconds=time.monotonic() - t0, definition_bytes=len(json.dumps(definition)))
        registry.activate(config.index, name, card)
        # The card beside the demo's results (the registry holds it too), not in the checkout.
        (cache_dir.parent / f"model-card-{name}.json").write_text(json.dumps(card, indent=2, default=float))
        model_reused = False
    reused["model"] = model_reused
    union = [f.union_ndcg10 for f in reports]
    rer = [f.reranked_ndcg10 for f in reports]
    training = {"model": name, "reused": model_reused, "feature_set": feature_set.name, "queries": len(data.queries),
                "candidates": int(sum(len(q.doc_ids) for q in data.queries)), "data_hash": data_hash,
                "labels": "the synthetic catalogue's generated judgments" if config.dataset_dir is None
                else "the dataset's qrels", "seconds": round(time.monotonic() - t0, 2),
                "folds": [f.__dict__ for f in reports],
                "cv": {"union_ndcg10": float(np.mean(union)), "reranked_ndcg10": float(np.mean(rer))}}
    console.print(f"   model {name} " + ("(reused: same training data)" if model_reused else "uploaded and active")
                  + f"; held-out nDCG@10 of the all-arms union {training['cv']['union_ndcg10']:.3f} -> "
                  f"{training['cv']['reranked_ndcg10']:.3f} reranked")
    default = f"fold{config.folds}"
    reranker = LocalReranker(feature_set, list(pipe.plans), features, models,
                             lambda qid: fold_of.get(qid, default), window=config.window,
                             query_vector_from=None if config.rerank_vector == "always" else vector_arms(pipe.plans))
    return feature_set, features, reranker, production, training


def _real_searches(console: Console, pipe: Any, config: DemoConfig, stream: Any, learner: Any, production: Any,
                   feature_set: Any, features: Mapping[str, Any], arms: Sequence[str], model: str | None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the first searches of the stream through the real pipeline with the learned policy and
    the active model; latency per stage, and the local rerank checked against the plugin's."""
    from .bandit.context import RequestContext
    from .ltr.rerank import Reranker
    from .pipeline import QueryError, SearchPipeline
    from .simulate.rerank import LocalReranker

    reranker = Reranker(pipe.client, pipe.index, model, feature_set.name if feature_set else None) if model else None
    live = SearchPipeline(pipe.client, pipe.index, pipe.plans, encoder=pipe.encoder, policy=learner,
                          reranker=reranker, rerank_window=config.window)
    local = None
    if production is not None and feature_set is not None:
        local = LocalReranker(feature_set, arms, features, {"production": production}, window=config.window,
                              query_vector_from=None if config.rerank_vector == "always" else vector_arms(pipe.plans))
    understander = live.understander()
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    identical = 0
    overlaps: list[float] = []
    failed = 0
    searches = stream.searches[: config.real_searches]
    with _progress(console) as bar:
        task = bar.add_task("searching", total=len(searches))
        for s in searches:
            # The pipeline encodes the query itself for the rerank (whichever arms the policy runs).
            vector = None
            try:
                resp = live.search(s.text, size=10, understander=understander, vector=vector,
                                   request=RequestContext(segment=s.segment))
            except QueryError:
                bar.advance(task)
                continue
            for stage, ms in _stage_times(resp.timings).items():
                samples[stage].append(float(ms))
            if local is not None and resp.rerank is not None:
                if not resp.rerank.applied:
                    failed += 1
                elif s.text in features:
                    mine = local.rank(s.text, s.query.id, [resp.strategy_results], 10)[0]
                    theirs = [h.doc_id for h in resp.hits[:10]]
                    identical += mine == theirs
                    overlaps.append(len(set(mine) & set(theirs)) / max(len(theirs), 1))
            bar.advance(task)
    latency = {"searches": len(samples["total"]), "stages": {k: _percentiles(v) for k, v in samples.items()},
               "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()}}
    check: dict[str, Any] = {}
    if overlaps:
        check = {"searches": len(overlaps), "identical_top10": identical / len(overlaps),
                 "mean_overlap": float(np.mean(overlaps)), "plugin_failed": failed, "model": model}
    elif failed:
        check = {"searches": 0, "plugin_failed": failed, "model": model}
    total = latency["stages"]["total"]
    if total["p50"] is not None and not math.isnan(total["p50"]):
        console.print(f"   end to end p50 {total['p50']:.1f} ms, p95 {total['p95']:.1f} ms")
    return latency, check
