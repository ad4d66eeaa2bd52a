"""Simulated users: click models over a displayed list of graded documents.

Relevance grades are first mapped to five levels 0..4 (:func:`grade_levels`): level =
round(4·g / g_max) for g > 0, else 0, so a binary collection uses the endpoint values (0 and 4),
Cranfield's gains 1..4 map to themselves and the synthetic catalogue's 1..3 to 1, 3, 4.

Each level has a click (attractiveness) probability a and a stop probability s from one of the
tables of Hofmann et al. (WSDM 2013) as used in later online-LTR simulations
(:data:`CLICK_TABLES`): perfect, navigational, informational.

Two models (Chuklin, Markov, de Rijke, *Click Models for Web Search*):

* :class:`PositionBasedModel` (PBM): P(click at rank k) = θ_k · a(level_k) with examination
  θ_k = k^(-η), independently per rank. E[clicks] = Σ_k θ_k·a_k.
* :class:`CascadeModel` (cascade with satisfaction, DBN with γ = 1): the user scans top-down,
  clicks an examined document with probability a_k and after a click stops with probability s_k.
  Examination e_1 = 1, e_(k+1) = e_k·(1 − a_k·s_k); P(click at k) = e_k·a_k; E[clicks] = Σ_k e_k·a_k.
  With every s = 1 this is the classic cascade model (at most one click).

Every model draws its clicks from a caller-supplied uniform array of shape ``(2, size)`` (row 0:
click draws, row 1: stop draws), so several policies shown the same user get common random
numbers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_LEVELS = 5

CLICK_TABLES: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # name: (click probability per level 0..4, stop-after-click probability per level 0..4)
    "perfect": ((0.0, 0.2, 0.4, 0.8, 1.0), (0.0, 0.0, 0.0, 0.0, 0.0)),
    "navigational": ((0.05, 0.3, 0.5, 0.7, 0.95), (0.2, 0.3, 0.5, 0.7, 0.9)),
    "informational": ((0.4, 0.6, 0.7, 0.8, 0.9), (0.1, 0.2, 0.3, 0.4, 0.5)),
}


class ClickModelError(ValueError):
    """A click model parameter is invalid; the message says which and why."""


def grade_levels(grades: Sequence[float] | np.ndarray, max_grade: float) -> np.ndarray:
    """Relevance grades -> levels 0..4 (int64, same shape): round(4·g/max_grade) for g > 0, else 0.

    ``max_grade`` is the collection's largest grade (> 0); grades above it are clipped to level 4.
    """
    if not (isinstance(max_grade, (int, float)) and math.isfinite(max_grade) and max_grade > 0):
        raise ClickModelError(f"max_grade must be a positive finite number, got {max_grade!r}")
    g = np.asarray(grades, dtype=np.float64)
    levels = np.where(g > 0, np.rint(4.0 * g / float(max_grade)), 0.0)
    # A positive grade is never level 0: even a barely relevant document is more attractive than noise.
    levels = np.where(g > 0, np.maximum(levels, 1.0), levels)
    return np.clip(levels, 0, N_LEVELS - 1).astype(np.int64)


def _table(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in CLICK_TABLES:
        raise ClickModelError(f"unknown click table {name!r}; choose one of {sorted(CLICK_TABLES)}")
    click, stop = CLICK_TABLES[name]
    return np.array(click, dtype=np.float64), np.array(stop, dtype=np.float64)


class ClickModel(ABC):
    """A user model over a displayed list of relevance levels (int array, shape (k,), best first)."""

    table: str

    @property
    def attractiveness(self) -> np.ndarray:
        """Click probability per level, shape (5,)."""
        return _table(self.table)[0]

    @abstractmethod
    def click_rates(self, levels: np.ndarray) -> np.ndarray:
        """Marginal P(click at rank k), float64 shape (k,)."""

    def expected_clicks(self, levels: np.ndarray) -> float:
        """E[number of clicks] on the list."""
        return float(self.click_rates(levels).sum())

    @abstractmethod
    def simulate(self, levels: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Clicks (bool, shape (k,)) drawn from ``uniforms`` (shape (2, >= k), values in [0, 1))."""

    @abstractmethod
    def examination_weights(self, clicks: np.ndarray) -> np.ndarray:
        """How much each displayed rank counts as an impression (float64, shape (k,)), from what a
        real system can observe (the positions and the clicks), for position-debiased counts."""

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Parameters, for the result JSON."""


def _check_levels(levels: np.ndarray) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.int64)
    if lv.ndim != 1:
        raise ClickModelError(f"levels must be a 1-d array, got shape {lv.shape}")
    if lv.size and (lv.min() < 0 or lv.max() >= N_LEVELS):
        raise ClickModelError(f"levels must lie in 0..{N_LEVELS - 1}, got {lv.tolist()}")
    return lv


def _check_uniforms(uniforms: np.ndarray, k: int) -> np.ndarray:
    u = np.asarray(uniforms, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] != 2 or u.shape[1] < k:
        raise ClickModelError(f"uniforms must have shape (2, >= {k}), got {u.shape}")
    return u


@dataclass(frozen=True)
class PositionBasedModel(ClickModel):
    """PBM: P(click at k) = k^(-eta) · a(level_k); ``table`` names the attractiveness row of
    :data:`CLICK_TABLES` (its stop row is not used)."""

    eta: float = 1.0
    table: str = "navigational"

    def __post_init__(self) -> None:
        if not isinstance(self.eta, (int, float)) or isinstance(self.eta, bool) or not 0.0 <= self.eta <= 10.0:
            raise ClickModelError(f"eta must be a number in [0, 10], got {self.eta!r}")
        _table(self.table)

    def theta(self, k: int) -> np.ndarray:
        """Examination probabilities θ_1..θ_k, shape (k,)."""
        return np.arange(1, k + 1, dtype=np.float64) ** (-float(self.eta))

    def click_rates(self, levels: np.ndarray) -> np.ndarray:
        lv = _check_levels(levels)
        return self.theta(lv.size) * self.attractiveness[lv]

    def simulate(self, levels: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        lv = _check_levels(levels)
        u = _check_uniforms(uniforms, lv.size)
        return u[0, : lv.size] < self.click_rates(lv)

    def examination_weights(self, clicks: np.ndarray) -> np.ndarray:
        return self.theta(len(clicks))

    def describe(self) -> dict[str, object]:
        return {"model": "pbm", "eta": float(self.eta), "table": self.table}


@dataclass(frozen=True)
class CascadeModel(ClickModel):
    """Cascade with grade-dependent click and stop probabilities (DBN with γ = 1)."""

    table: str = "navigational"

    def __post_init__(self) -> None:
        _table(self.table)

    @property
    def stop(self) -> np.ndarray:
        """Stop-after-click probability per level, shape (5,)."""
        return _table(self.table)[1]

    def examination(self, levels: np.ndarray) -> np.ndarray:
        """e_k = Π_(i<k) (1 − a_i·s_i), shape (k,)."""
        lv = _check_levels(levels)
        leave = self.attractiveness[lv] * self.stop[lv]
        return np.concatenate(([1.0], np.cumprod(1.0 - leave)[:-1])) if lv.size else np.zeros(0)

    def click_rates(self, levels: np.ndarray) -> np.ndarray:
        lv = _check_levels(levels)
        return self.examination(lv) * self.attractiveness[lv]

    def simulate(self, levels: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        lv = _check_levels(levels)
        u = _check_uniforms(uniforms, lv.size)
        a, s = self.attractiveness[lv], self.stop[lv]
        clicks = np.zeros(lv.size, dtype=bool)
        for k in range(lv.size):
            if u[0, k] < a[k]:
                clicks[k] = True
                if u[1, k] < s[k]:
                    break
        return clicks

    def examination_weights(self, clicks: np.ndarray) -> np.ndarray:
        """Skip-above: every rank down to the last click was examined (weight 1); without a click the
        cascade user scanned the whole list; below the last click nothing is known, so no
        impression is counted there."""
        c = np.asarray(clicks, dtype=bool)
        if not c.any():
            return np.ones(c.size)
        last = int(np.flatnonzero(c)[-1])
        return (np.arange(c.size) <= last).astype(np.float64)

    def describe(self) -> dict[str, object]:
        return {"model": "cascade", "table": self.table}


def make_click_model(name: str, table: str = "navigational", eta: float = 1.0) -> ClickModel:
    """``"pbm"`` (with ``eta``) or ``"cascade"``, over the click table ``table``."""
    if name == "pbm":
        return PositionBasedModel(eta=eta, table=table)
    if name == "cascade":
        return CascadeModel(table=table)
    raise ClickModelError(f"unknown click model {name!r}; choose pbm or cascade")
