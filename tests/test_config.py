"""Settings read from the environment (orchestrator/config.py) and the package data lookup."""

from __future__ import annotations

import pytest

from orchestrator import config
from orchestrator.config import ConfigError


def test_package_data_is_found_through_the_package():
    assert sorted(p.name for p in config.query_plans_dir({}).glob("*.yaml"))
    assert (config.index_templates_dir({}) / "catalog.yaml").is_file()
    assert (config.ltr_models_dir() / "README.md").is_file()
    with pytest.raises(ValueError, match="unknown package data"):
        config.package_data_dir("nope")


def test_directory_overrides(tmp_path):
    assert config.query_plans_dir({"LTRR_QUERY_PLANS": str(tmp_path)}) == tmp_path
    assert config.index_templates_dir({"LTRR_INDEX_TEMPLATES": str(tmp_path)}) == tmp_path
    with pytest.raises(ConfigError, match="LTRR_QUERY_PLANS='/no/such/dir' is not a directory"):
        config.query_plans_dir({"LTRR_QUERY_PLANS": "/no/such/dir"})


def test_plans_and_templates_errors_keep_their_types(monkeypatch):
    from orchestrator.catalog import CatalogError, templates_dir
    from orchestrator.strategies import PlanError, plans_dir

    monkeypatch.setenv("LTRR_QUERY_PLANS", "/no/such/dir")
    monkeypatch.setenv("LTRR_INDEX_TEMPLATES", "/no/such/dir")
    with pytest.raises(PlanError, match="LTRR_QUERY_PLANS"):
        plans_dir()
    with pytest.raises(CatalogError, match="LTRR_INDEX_TEMPLATES"):
        templates_dir()


def test_node_settings(tmp_path):
    assert config.node_heap_mb({}) == 1024
    assert config.node_heap_mb({"LTRR_NODE_HEAP_MB": "512"}) == 512
    for bad, why in (("lots", "is not an integer"), ("0", "must be positive")):
        with pytest.raises(ConfigError, match=f"LTRR_NODE_HEAP_MB='{bad}' {why}"):
            config.node_heap_mb({"LTRR_NODE_HEAP_MB": bad})
    assert config.opensearch_version({}) is None
    assert config.opensearch_version({"LTRR_OPENSEARCH_VERSION": "2.19.1"}) == "2.19.1"
    assert config.java_home({"LTRR_JAVA_HOME": str(tmp_path)}) == tmp_path
    assert config.maven_executable({"LTRR_MVN": "/opt/mvn/bin/mvn"}) == "/opt/mvn/bin/mvn"
    assert config.maven_args({"LTRR_MAVEN_ARGS": "-s '/a b/settings.xml' -o"}) == ("-s", "/a b/settings.xml", "-o")
    with pytest.raises(ConfigError, match="LTRR_MAVEN_ARGS"):
        config.maven_args({"LTRR_MAVEN_ARGS": "-s 'unclosed"})
    zip_path = tmp_path / "ltr.zip"
    zip_path.write_bytes(b"PK")
    var = "LTRR_LTR_PLUGIN_ZIP"
    assert config.plugin_source(var, {var: str(zip_path)}) == str(zip_path.resolve())
    assert config.plugin_source(var, {var: str(tmp_path)}) == str(tmp_path.resolve())  # a folder of zips
    assert config.plugin_source(var, {var: "https://example.org/ltr.zip"}) == "https://example.org/ltr.zip"
    assert config.plugin_source(var, {}) is None
    with pytest.raises(ConfigError, match="does not exist"):
        config.plugin_source(var, {var: str(tmp_path / "missing.zip")})
    with pytest.raises(ConfigError, match="only https"):
        config.plugin_source(var, {var: "http://example.org/ltr.zip"})


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists packages by hand (the data directories are mapped in): a new subpackage
    missing from the list would install a wheel that cannot import it."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "orchestrator").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
