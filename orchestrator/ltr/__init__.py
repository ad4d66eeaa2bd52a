"""Learning to rank inside OpenSearch: features as data (``features``), feature logging
(``feature_log``), XGBoost models in the LTR plugin (``model``), and the rerank stage (``rerank``)."""
