"""``ltrr report``: result documents of demo, simulate and evaluate as self-contained HTML and Markdown."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.report import REPORT_HTML, REPORT_MARKDOWN, ReportError, load_result, result_kind, write_report
from orchestrator.reporting import ReportTable, bootstrap_mean_interval, goal_table, intent_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _simulation_doc() -> dict:
    """A real (small) simulation result: two arms, each finding the relevant documents of one user type."""
    from orchestrator.bandit.base import BudgetConfig
    from orchestrator.bandit.policies import make_policy
    from orchestrator.simulate.candidates import CandidateCache
    from orchestrator.simulate.clicks import CascadeModel
    from orchestrator.simulate.runner import SimulationConfig, build_policies, run_simulation
    from orchestrator.simulate.stream import SimQuery, StreamConfig, build_stream

    arms = ("bm25_popularity", "fuzzy")
    queries = [SimQuery(f"q{i}", f"song number {i} about lovebirds{i}", {f"r{i}_{j}": 3 - j for j in range(3)},
                        intent="artist" if i % 2 else "misspelled") for i in range(12)]
    stream = build_stream(queries, StreamConfig(300, seed=3))
    gen = np.random.default_rng(3)
    lists = {}
    for s in stream.searches:
        noise = [f"n{int(i)}" for i in gen.choice(3000, size=100, replace=False)]
        good = sorted(s.query.relevant) + noise
        best = "fuzzy" if s.query.intent == "misspelled" else "bm25_popularity"
        lists[s.text] = {a: (good if a == best else noise)[:100] for a in arms}
    cache = CandidateCache.from_lists(arms, 100, lists)
    budget = BudgetConfig()
    policies = build_policies(["joint", "random", "static:bm25_popularity", "static:fuzzy", "all"], arms, budget, 3,
                              make_policy)
    result = run_simulation(stream, cache, CascadeModel(), policies, SimulationConfig(budget=budget))
    return result.to_json({"dataset": "toy"})


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_simulation_result_becomes_html_with_embedded_plots_and_markdown(tmp_path):
    doc = _simulation_doc()
    assert result_kind(doc) == "simulation"
    files = write_report(doc, tmp_path / "out")
    html = files.html.read_text()
    md = files.markdown.read_text()
    assert files.html.name == REPORT_HTML and files.markdown.name == REPORT_MARKDOWN
    # reward, regret and the learner's arm share per intent; embedded, so the page needs no other file
    assert set(files.images) == {"reward", "regret", "arm_share"}
    embedded = _images(html)
    assert len(embedded) == 3 and all(png.startswith(PNG_MAGIC) for png in embedded)
    assert not re.search(r'<img[^>]+src="(?!data:)', html)
    for name, path in files.images.items():
        assert path.read_bytes().startswith(PNG_MAGIC)
        assert f"]({path.name})" in md, name
    # the tables: every policy, and per intent what the learner ran
    for spec in doc["policies"]:
        assert f"| {spec} |" in md and f"<td>{spec}</td>" in html
    assert "| artist (" in md and "| misspelled (" in md


def test_evaluation_result_gets_intervals_per_system(tmp_path):
    per_query = {"a": {f"q{i}": {"nDCG@10": 0.5 + 0.01 * i} for i in range(20)},
                 "b": {f"q{i}": {"nDCG@10": 0.2} for i in range(20)}}
    systems = [{"system": "a", "queries": 20, "nDCG@10": 0.595, "R@100": 0.8, "RR@10": 0.7, "candidate_recall": None,
                "failed": 0},
               {"system": "b", "queries": 20, "nDCG@10": 0.2, "R@100": 0.3, "RR@10": 0.2, "candidate_recall": 0.9,
                "failed": 0},
               {"system": "c", "queries": 20, "nDCG@10": None, "R@100": None, "RR@10": None, "candidate_recall": None,
                "failed": 3}]
    doc = {"meta": {"dataset": "toy", "split": "test", "queries": 20}, "systems": systems, "per_query": per_query}
    files = write_report(doc, tmp_path)
    md = files.markdown.read_text()
    found = re.search(r"\| a \| 0\.595 \[([0-9.]+), ([0-9.]+)\]", md)
    assert found, md
    low, high = (float(x) for x in found.groups())
    assert low < 0.595 < high
    assert "| b | 0.200 [0.200, 0.200] |" in md  # no variance, no width
    assert "failed on 3 of 20 queries" in md  # never zeros for a failed system
    assert list(files.images) == ["ndcg"] and len(_images(files.html.read_text())) == 1


def test_bad_results_are_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="not a result"):
        result_kind({"hello": 1})
    with pytest.raises(ReportError, match="JSON object"):
        result_kind([1, 2])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="not JSON"):
        load_result(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"meta": {}}))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", str(other)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "not a result" in proc.stderr
    assert not (tmp_path / REPORT_HTML).exists()


def test_cli_report_writes_beside_the_results(tmp_path):
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(_simulation_doc(), default=float))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", str(path), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r" / REPORT_HTML).exists() and (tmp_path / "r" / "report-reward.png").exists()


def test_tables_render_the_same_content_in_every_format():
    table = ReportTable("t | x", ("name", "value"), (("a|b", "1.000"), ("c", "2.000")), "note <b>")
    md = table.to_markdown()
    assert "| a\\|b | 1.000 |" in md and md.startswith("**t \\| x**")
    html = table.to_html()
    assert "<td>a|b</td>" in html and "note &lt;b&gt;" in html
    with pytest.raises(ValueError, match="cells"):
        ReportTable("t", ("a", "b"), (("only one",),))
    goals = goal_table([{"goal": "g", "measured": 1.2, "threshold": 1.1, "comparison": ">=", "passed": True},
                        {"goal": "h", "measured": None, "threshold": 0.6, "comparison": "<=", "passed": None}])
    assert goals.rows[0][1:4] == ("1.200x", ">= 1.10x", "PASS") and goals.rows[1][3] == "not measured"
    intents = intent_table({"grouped_by": "intent", "groups": {"artist": {
        "searches_last": 10, "arm_share_last": {"a": 1.0, "b": 0.25}, "action_share_last": {"a+b": 0.25, "a": 0.75},
        "reward_per_search_last": 1.5}}}, ["a", "b"])
    assert intents.rows[0] == ("artist (10)", "100%", "25%", "a+b 25%, a 75%", "1.500")


def test_bootstrap_interval_resamples_clusters():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.1, 400)
    mean, low, high = bootstrap_mean_interval(x, seed=1)
    assert low < mean < high and high - low < 0.05
    # 400 searches of only 4 queries: the interval is as wide as 4 observations make it
    clusters = np.repeat(np.arange(4), 100)
    y = np.repeat([0.1, 0.4, 0.6, 0.9], 100)
    _m, low_c, high_c = bootstrap_mean_interval(y, clusters, seed=1)
    _m, low_i, high_i = bootstrap_mean_interval(y, seed=1)
    assert high_c - low_c > 5 * (high_i - low_i)
