"""Package data, not code: LTR feature sets and trained models, installed as
``orchestrator.ltr_models`` (found through orchestrator.config.ltr_models_dir)."""
