"""Package data, not code: the query plan YAML files, installed as ``orchestrator.query_plans``
(found through orchestrator.config.query_plans_dir)."""
