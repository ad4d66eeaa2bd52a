"""Prometheus metrics of the HTTP service (``GET /metrics``).

Each app has its own registry, so several apps can live in one process (tests). With
``PROMETHEUS_MULTIPROC_DIR`` set (``ltrr serve --workers N`` sets it to a fresh directory), every
worker writes its values there and ``/metrics`` of any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ..api import FeedbackOut, SearchResponseOut

# Seconds. Search stages run from microseconds (fusion) to a deadline (arms); HTTP adds little.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
ARM_OUTCOMES = ("ok", "failed", "timed_out")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class ServiceMetrics:
    """The counters and histograms, and the helpers that fill them from typed responses."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ltrr_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("ltrr_http_request_seconds", "HTTP request time by route", ["route"],
                                         buckets=STAGE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("ltrr_search_stage_seconds", "Time per search stage (the response's timings_ms)",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.arm_results = Counter("ltrr_arm_results", "Arms run, by outcome (ok, failed, timed_out)",
                                   ["arm", "status"], registry=r)
        self.bandit_arms = Counter("ltrr_bandit_arm_choices", "Arms the policy chose", ["arm"], registry=r)
        self.bandit_decisions = Counter("ltrr_bandit_decisions", "Policy decisions, by policy and whether it explored",
                                        ["policy", "explored"], registry=r)
        self.degraded = Counter("ltrr_search_degraded", "Searches served without part of the pipeline (arm, rerank)",
                                ["part"], registry=r)
        self.feedback_events = Counter("ltrr_feedback_events", "Feedback events: accepted, duplicate or spooled",
                                       ["outcome"], registry=r)
        self.feedback_lag = Histogram("ltrr_feedback_lag_seconds", "Time from a search (its log record) to its feedback",
                                      buckets=LAG_BUCKETS, registry=r)
        self.search_log_dropped = Counter("ltrr_search_log_dropped", "Search log records dropped (buffer full or closed)",
                                          registry=r)
        self.background = Counter("ltrr_background_runs", "Background learning and sync steps, by outcome",
                                  ["task", "outcome"], registry=r)
        self._dropped_seen = 0
        self._lock = threading.Lock()

    # ---- filling -----------------------------------------------------------------------------
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_search(self, response: SearchResponseOut) -> None:
        for stage, ms in response.timings_ms.items():
            if ms > 0:  # a stage that did not run (no rerank, arms fixed by the caller) is not a 0 s sample
                self.stage_seconds.labels(stage).observe(ms / 1000.0)
        for arm in response.arms:
            if arm.status in ARM_OUTCOMES:
                self.arm_results.labels(arm.arm, arm.status).inc()
        decision = response.decision
        if decision is not None:
            self.bandit_decisions.labels(decision.policy, "true" if decision.explored else "false").inc()
            for arm in decision.arms:
                self.bandit_arms.labels(arm).inc()
        for item in response.degraded:
            self.degraded.labels("rerank" if item.startswith("rerank") else "arm").inc()

    def observe_feedback(self, out: FeedbackOut) -> None:
        if out.accepted:
            self.feedback_events.labels("accepted").inc(out.accepted)
        if out.duplicates:
            self.feedback_events.labels("duplicate").inc(out.duplicates)
        if out.spooled:
            self.feedback_events.labels("spooled").inc(out.spooled)

    def observe_search_log(self, search_log: Any) -> None:
        """Count the search log's drops since the last look (its stats are cumulative)."""
        if search_log is None:
            return
        dropped = int(search_log.stats.dropped)
        with self._lock:
            delta, self._dropped_seen = dropped - self._dropped_seen, max(dropped, self._dropped_seen)
        if delta > 0:
            self.search_log_dropped.inc(delta)

    # ---- exposition --------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type: this app's registry, or all workers' values."""
        directory = multiprocess_dir()
        if directory:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
