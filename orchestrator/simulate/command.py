"""``ltrr simulate``: run bandit policies and baselines on a simulated query stream over a real index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

DEFAULT_POLICIES = ("joint", "linucb", "thompson", "epsilon", "random")


def _levels(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint="--levels") from None
    if not levels:
        raise click.BadParameter("give at least one level", param_hint="--levels")
    return levels


def sim_queries(queries: Any, qrels: Any) -> list[Any]:
    """Judged :class:`~orchestrator.datasets.QueryRow` s with their qrels -> :class:`~.stream.SimQuery` s
    (the ``intent`` field, when a string, is kept)."""
    from .stream import SimQuery

    out = []
    for q in queries:
        intent = q.fields.get("intent")
        out.append(SimQuery(q.id, q.text, dict(qrels[q.id]), intent if isinstance(intent, str) and intent else None))
    return out


def _format(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def simulated_ope(result: Any, logger: str, targets: list[str], budget: Any) -> dict[str, Any]:
    """Off-policy estimates of ``targets`` from ``logger``'s simulated search log, each beside the
    target's true value: its own simulated mean reward on the same query stream (reward: a clicked
    item was among the candidates). Targets that use the Q2E arm read their own memory when they run
    and the logger's in the log, so their truth and estimate may differ by more than noise."""
    from ..bandit.offline import offline_report

    report = offline_report(result.logs[logger], ["logged", *targets], budget=budget)
    doc = report.to_json()
    truth = {spec: float(np.mean(run.clicks > 0)) for spec, run in result.runs.items()}
    truth["logged"] = truth[logger]
    for row in doc["targets"]:
        row["truth"] = truth.get(row["target"])
    doc["logger"] = logger
    return doc


def ope_table(ope: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table("target", "truth", "IPS [95%]", "SNIPS", "DR [95%]", "ESS", "covered",
                  title=f"off-policy estimates from {ope['logger']}'s simulated log ({ope['n_evaluated']} searches)",
                  title_justify="left")

    def interval(v: dict[str, Any] | None) -> str:
        if not v or any(v.get(k) is None for k in ("mean", "low", "high")):
            return "—"
        return f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    for row in ope["targets"]:
        dr, truth = row.get("dr"), row.get("truth")
        bounded = dr and dr.get("low") is not None and dr.get("high") is not None
        covered = "—" if not bounded or truth is None else ("yes" if dr["low"] <= truth <= dr["high"] else "no")
        table.add_row(row["target"], "—" if truth is None else f"{truth:.3f}", interval(row.get("ips")),
                      "—" if not (row.get("snips") or {}).get("mean") else f"{row['snips']['mean']:.3f}", interval(dr),
                      f"{row['ess']:.0f}", covered)
    return table


def result_table(result: dict[str, Any]) -> Any:
    """A rich table of a result document (``SimulationResult.to_json()``)."""
    from rich.table import Table

    meta = result["meta"]
    table = Table(title=f"{meta.get('dataset', '')}: {meta['stream']['searches']} searches, best static arm "
                        f"{result.get('best_static')}, click model {meta['click_model']}", title_justify="left")
    table.add_column("policy", no_wrap=True)
    for name in ("clicks", "/search", "/best static", "success", "cand hit", "cand recall", "regret", "regret obs",
                 "docs", "docs/all", "time/all"):
        table.add_column(name, justify="right")
    for spec, entry in result["policies"].items():
        f = entry["final"]
        table.add_row(spec, str(f["reward"]), f"{f['reward_per_search']:.3f}",
                      _format(f.get("reward_vs_best_static"), ".3f", "x"),
                      f"{f['success_rate']:.3f}", f"{f['candidate_hit_rate']:.3f}", f"{f['candidate_recall']:.3f}",
                      f"{f['regret']:.1f}", f"{f['regret_observed']:.1f}", f"{f['requested_per_search']:.0f}",
                      _format(f.get("requested_vs_all"), ".3f", "x"), _format(f.get("time_vs_all"), ".3f", "x"))
    return table


@click.command("simulate")
@click.option("--dataset", "dataset_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A BEIR-layout dataset whose judged queries and qrels drive the stream.")
@click.option("--index", "alias", default=None, help="Catalogue alias (default: the dataset's name).")
@click.option("--split", default=None, help="qrels split (default: test, else the first one).")
@click.option("--searches", type=click.IntRange(1, 1_000_000), default=5000, show_default=True)
@click.option("--policy", "policies", multiple=True, metavar="SPEC",
              help="joint, linucb, thompson, epsilon, random, static:<arm>[+<arm>...], all (with settings, e.g. "
                   "joint:alpha=0.2); repeatable. Default: joint, linucb, thompson, epsilon, random.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also run every single static arm and `all` on the same stream.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="RESULT.json (PNG plots are written beside it).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--click-model", type=click.Choice(["cascade", "pbm"]), default="cascade", show_default=True)
@click.option("--click-table", type=click.Choice(["navigational", "informational", "perfect"]), default="navigational",
              show_default=True, help="Grade-dependent click (and, for cascade, stop) probabilities.")
@click.option("--eta", type=float, default=1.0, show_default=True, help="PBM examination θ_k = k^-eta.")
@click.option("--zipf", "zipf_s", type=float, default=1.0, show_default=True, help="Zipf exponent of query popularity.")
@click.option("--tail-fraction", type=float, default=0.25, show_default=True, help="Share of queries held out as tail.")
@click.option("--tail-share", type=float, default=0.1, show_default=True, help="Share of searches drawing a tail query.")
@click.option("--segment-accuracy", type=float, default=0.7, show_default=True,
              help="Probability that the request's segment tag is the user's true type.")
@click.option("--budget", "total", type=int, default=100, show_default=True, help="Candidates per search, all arms together.")
@click.option("--levels", default="20,50,100", show_default=True, help="Budget levels an arm may get.")
@click.option("--max-arms", type=int, default=2, show_default=True)
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), default=None,
              help="Candidate cache file: read when present (texts it lacks are fetched), written after fetching.")
@click.option("--ope", "ope_logger", default=None, metavar="POLICY",
              help="Also evaluate off-policy from POLICY's simulated search log: IPS, SNIPS and DR estimates of "
                   "uniform random and every static pair (simulated too, so each estimate sits beside its truth).")
@click.option("--check-q2e", "check_keys", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="After the run, write the first policy's simulated Q2E memory for this many keys into a "
                   "throwaway memory index, search it with the q2e_memory plan and compare (deleted afterwards).")
def simulate(dataset_dir: str, alias: str | None, split: str | None, searches: int, policies: tuple[str, ...],
             baselines: bool, out: str, seed: int, click_model: str, click_table: str, eta: float, zipf_s: float,
             tail_fraction: float, tail_share: float, segment_accuracy: float, total: int, levels: str, max_arms: int,
             cache_path: str | None, check_keys: int, ope_logger: str | None) -> None:
    """Simulate users searching DATASET's judged queries and measure each policy's clicks, candidate
    recall, pseudo-regret and OpenSearch cost; writes RESULT.json and PNG plots beside it."""
    from rich.markup import escape
    from rich.progress import Progress

    from ..bandit.base import BudgetConfig, PolicyConfigError
    from ..cli import _fail, _judged_dataset, _pipeline, console, err
    from .candidates import CandidateCache, CandidateCacheError
    from .clicks import ClickModelError, make_click_model
    from .plots import write_plots
    from .runner import SimulationConfig, SimulationError, build_policies, run_simulation
    from .stream import StreamConfig, StreamConfigError, build_stream, document_frequency

    try:
        from ..bandit.policies import make_policy
    except ImportError as e:
        _fail(f"the bandit policies are not available ({e})")
        return
    dataset, alias, split, qrels, queries, skipped = _judged_dataset(dataset_dir, alias, split)
    if not queries:
        _fail("no judged query with text and a positive judgment to simulate", 2)
    try:
        budget_levels = _levels(levels)
        stream_config = StreamConfig(searches, seed=seed, zipf_s=zipf_s, tail_fraction=tail_fraction,
                                     tail_share=tail_share, segment_accuracy=segment_accuracy)
        model = make_click_model(click_model, click_table, eta)
    except (click.BadParameter, StreamConfigError, ClickModelError) as e:
        _fail(str(e), 2)
        return
    sim_qs = sim_queries(queries, qrels)
    has_intents = any(q.intent is not None for q in sim_qs)
    doc_frequency = None
    if "vocabulary" in stream_config.mix_for(has_intents):
        from ..datasets import CorpusRow

        doc_frequency = document_frequency(f"{r.title} {r.text}" for r in dataset.iter_corpus() if isinstance(r, CorpusRow))
    try:
        stream = build_stream(sim_qs, stream_config, doc_frequency)
    except StreamConfigError as e:
        _fail(str(e), 2)
        return
    for note in stream.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    pipe = _pipeline(alias)
    arms = tuple(pipe.plans)
    try:
        budget = BudgetConfig(total=total, levels=budget_levels, max_arms=max_arms,
                              costs={name: plan.cost for name, plan in pipe.plans.items()})
        specs = list(policies or DEFAULT_POLICIES)
        if baselines:
            specs += [f"static:{a}" for a in arms] + ["all"]
        if ope_logger:
            from itertools import combinations

            pairs = [f"static:{a}+{b}" for a, b in combinations(arms, 2)]
            specs += [x for x in [ope_logger, "random", *pairs] if x not in specs]
        built = build_policies(specs, arms, budget, seed, make_policy)
    except PolicyConfigError as e:
        _fail(str(e), 2)
        return
    max_level = max(budget_levels)
    cache = None
    if cache_path and Path(cache_path).exists():
        try:
            cache = CandidateCache.load(cache_path)
        except CandidateCacheError as e:
            _fail(str(e), 2)
            return
        if cache.index != alias or cache.max_level != max_level or tuple(cache.arms) != arms:
            _fail(f"{cache_path} holds candidates of {cache.index} at level {cache.max_level} for arms "
                  f"{', '.join(cache.arms)}; this run needs {alias} at {max_level} for {', '.join(arms)} "
                  "(use another --cache file)", 2)
    texts = stream.texts
    todo = cache.covers(texts) if cache is not None else texts
    if todo:
        with Progress(console=err) as bar:
            task = bar.add_task(f"fetching candidates of {len(todo)} query texts", total=len(todo))
            fetched = CandidateCache.from_pipeline(pipe, todo, max_level, levels=budget_levels,
                                                   on_text=lambda: bar.advance(task))
        if cache is not None:
            cache.queries.update(fetched.queries)
            cache.fetch_seconds += fetched.fetch_seconds
            cache.level_time = cache.level_time or fetched.level_time
        else:
            cache = fetched
        if cache_path:
            cache.save(cache_path)
    assert cache is not None
    for arm, count in cache.failures().items():
        err.print(f"[yellow]warning:[/] {arm} failed on {count} of {len(cache.queries)} query texts when fetched")
    max_grade = max((g for q in sim_qs for g in q.grades.values()), default=1)
    with Progress(console=err) as bar:
        task = bar.add_task(f"simulating {searches} searches x {len(built)} policies", total=searches)
        try:
            result = run_simulation(stream, cache, model, built, SimulationConfig(budget=budget),
                                    max_grade=max_grade, on_search=lambda t: bar.advance(task),
                                    log_policies=(ope_logger,) if ope_logger else ())
        except SimulationError as e:
            _fail(str(e))
            return
    document = result.to_json({"dataset": dataset.spec.name, "index": alias, "split": split,
                               "queries": len(sim_qs), "skipped_queries": len(skipped), "cache": cache.summary()})
    if check_keys:
        from .q2e import Q2ECheckUnavailable, check_against_index

        first = next(iter(built))
        memory = result.memories[first]
        key_texts: dict[str, str] = {}
        for s in stream.searches:  # the keys in the order the stream first searched them
            key = cache.understanding(s.text).key
            if memory.has_key(key):
                key_texts.setdefault(key, s.text)
        sample = dict(list(key_texts.items())[:check_keys])
        try:
            check: dict[str, Any] = check_against_index(pipe.client, alias, memory, sample, size=10, now=searches)
        except Q2ECheckUnavailable as e:
            check = {"error": str(e)}
        document["q2e_check"] = {"policy": first, **check}
        if "error" not in check:
            console.print(f"Q2E check ({first}, {check['keys']} keys): top-10 overlap with the real memory "
                          f"{_format(check['mean_overlap'], '.3f')}, same order {_format(check['exact_order_share'], '.2f')}, "
                          f"q2e_memory took {_format(check['mean_took_ms'], '.2f')} ms")
        else:
            err.print(f"[yellow]Q2E check not run:[/] {escape(check['error'])}")
    if ope_logger:
        document["ope"] = simulated_ope(result, ope_logger, [x for x in built if x == "random" or "+" in x], budget)
        console.print(ope_table(document["ope"]))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(document, indent=1, default=float))
    plots = write_plots(document, out_path)
    console.print(result_table(document))
    learner = next((spec for spec in document["policies"] if not spec.startswith("static:") and spec not in ("all", "random")),
                   None)
    if learner is not None:  # what the first learning policy ended up choosing, per intent (or user type)
        from ..reporting import intent_table

        console.print(intent_table({**document["policies"][learner]["by_intent"], "policy": learner},
                                   document["meta"]["arms"]).to_rich())
    goals = document["goals"]
    for spec, g in goals.items():
        if spec in ("thresholds", "baselines_regret_late_over_early"):
            continue
        console.print(f"  {escape(spec)}: reward {_format(g['reward_vs_best_static'], '.3f', 'x')} of the best static arm "
                      f"(goal >= 1.10: {g['reward_goal']}), documents {_format(g['requested_vs_all'], '.3f', 'x')} "
                      f"of all arms' (goal <= 0.6: {g['cost_goal']}), regret growth last/first quarter "
                      f"{_format(g['regret_late_over_early'])} true, {_format(g['regret_observed_late_over_early'])} "
                      "observed context")
    console.print(f"wrote {out_path}, {plots['reward']}, {plots['regret']} ({result.elapsed_seconds:.0f}s simulating)")
