"""Package data, not code: the index template YAML files, installed as
``orchestrator.index_templates`` (found through orchestrator.config.index_templates_dir)."""
