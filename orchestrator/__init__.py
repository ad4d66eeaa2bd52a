"""ltrr: learning to rank *and retrieve* over OpenSearch.

One module per stage of the flow: understanding -> bandit -> strategies -> fusion -> ltr -> feedback.
"""

__version__ = "0.1.0"
