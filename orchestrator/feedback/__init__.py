"""The logging and feedback path: the search log, engagement events, rewards and the click model.

* :class:`SearchLog` (``searchlog``): every search's context, decision, per-arm hits and ranking in
  the UBI queries index, through a bounded asynchronous buffer.
* :class:`FeedbackStore` (``events``): engagement events in the UBI events index, idempotent by
  event id.
* :class:`RewardJoiner` (``rewards``): per-arm rewards of each search after its window, once.
* ``clickmodel``: the position-based click model fitted by EM, and click-trained LTR groups.

Names are imported on first use, so ``import orchestrator.feedback`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .records import EVENT_GRADES, FeedbackError, FeedbackEvent, SearchRecord

if TYPE_CHECKING:
    from .clickmodel import (
        ClickCounts,
        ClickGroup,
        ClickLabels,
        ClickModelError,
        PBMConfig,
        PBMEstimate,
        click_training_groups,
        click_training_set,
        estimate_pbm,
        feature_requests,
        train_weighted,
    )
    from .events import FeedbackReceipt, FeedbackStore, FeedbackStoreError, UnknownSearchError
    from .rewards import FinalizedSearch, JoinerConfig, RewardJoiner
    from .searchlog import LogEntry, SearchLog, SearchLogConfig, SearchLogError, SearchLogStats

_LAZY = {
    **dict.fromkeys(("SearchLog", "SearchLogConfig", "SearchLogError", "SearchLogStats", "LogEntry"), "searchlog"),
    **dict.fromkeys(("FeedbackStore", "FeedbackReceipt", "FeedbackStoreError", "UnknownSearchError"), "events"),
    **dict.fromkeys(("RewardJoiner", "JoinerConfig", "FinalizedSearch"), "rewards"),
    **dict.fromkeys(("ClickCounts", "ClickGroup", "ClickLabels", "ClickModelError", "PBMConfig", "PBMEstimate",
                     "click_training_groups", "click_training_set", "estimate_pbm", "feature_requests",
                     "train_weighted"), "clickmodel"),
}

__all__ = [
    "EVENT_GRADES", "FeedbackError", "FeedbackEvent", "SearchRecord",
    "SearchLog", "SearchLogConfig", "SearchLogError", "SearchLogStats", "LogEntry",
    "FeedbackStore", "FeedbackReceipt", "FeedbackStoreError", "UnknownSearchError",
    "RewardJoiner", "JoinerConfig", "FinalizedSearch",
    "ClickCounts", "ClickGroup", "ClickLabels", "ClickModelError", "PBMConfig", "PBMEstimate",
    "click_training_groups", "click_training_set", "estimate_pbm", "feature_requests", "train_weighted",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
