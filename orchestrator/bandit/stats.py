"""Sufficient statistics of the per-arm linear models, kept additive so processes can merge them.

Per arm, over the searches that ran it (x: context, r: reward in [0, 1]):

* ``gram`` = Σ x xᵀ (d × d) and ``moment`` = Σ r·x (d): ridge regression gives
  θ̂ = (λI + gram)⁻¹ moment; the prior λI is added when solving, never stored, so sums merge.
* ``pulls`` = number of updates, ``reward_sum`` = Σ r.
* ``rank_counts[j]`` = engaged items the arm found at within-arm rank in (levels[j-1], levels[j]]
  (the last bucket is beyond the largest level): the budget curve G(n) = share found by rank n.

Merging is elementwise addition (exact up to floating-point summation order), so a worker's
delta since its last flush is itself a ``PolicyStatistics``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ArmStatistics:
    gram: np.ndarray  # (d, d) float64
    moment: np.ndarray  # (d,) float64
    rank_counts: np.ndarray  # (len(levels) + 1,) float64
    pulls: int = 0
    reward_sum: float = 0.0

    @classmethod
    def zeros(cls, dim: int, n_levels: int) -> ArmStatistics:
        return cls(np.zeros((dim, dim)), np.zeros(dim), np.zeros(n_levels + 1))

    def add(self, x: np.ndarray, reward: float, rank_bucket: Iterable[int] = (), *,
            outer: np.ndarray | None = None) -> None:
        """One observation: a rank-one update of the Gram matrix (O(d²)). ``outer``: x xᵀ when the
        caller already has it (the arms of one search share their context)."""
        self.gram += np.outer(x, x) if outer is None else outer
        self.moment += reward * x
        self.pulls += 1
        self.reward_sum += reward
        for j in rank_bucket:
            self.rank_counts[j] += 1

    def merge(self, other: ArmStatistics) -> None:
        self.gram += other.gram
        self.moment += other.moment
        self.rank_counts += other.rank_counts
        self.pulls += other.pulls
        self.reward_sum += other.reward_sum

    def copy(self) -> ArmStatistics:
        return ArmStatistics(self.gram.copy(), self.moment.copy(), self.rank_counts.copy(), self.pulls, self.reward_sum)


def _pack(a: np.ndarray) -> str:
    """float64 array -> base64 of its little-endian bytes: exact, and compact in JSON."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f8").tobytes()).decode()


def _unpack(s: str, shape: Sequence[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f8").reshape(shape).copy()


@dataclass
class PolicyStatistics:
    """Everything a linear policy has learned: one :class:`ArmStatistics` per arm."""

    dim: int
    levels: tuple[int, ...]
    arms: dict[str, ArmStatistics] = field(default_factory=dict)

    def arm(self, name: str) -> ArmStatistics:
        """The arm's statistics, created at zero on first use."""
        stats = self.arms.get(name)
        if stats is None:
            stats = self.arms[name] = ArmStatistics.zeros(self.dim, len(self.levels))
        return stats

    def rank_bucket(self, rank: int) -> int:
        """The ``rank_counts`` index of a within-arm rank (1-based)."""
        for j, level in enumerate(self.levels):
            if rank <= level:
                return j
        return len(self.levels)

    def merge(self, other: PolicyStatistics) -> None:
        if other.dim != self.dim or tuple(other.levels) != tuple(self.levels):
            raise ValueError(f"cannot merge statistics of shape (d={other.dim}, levels={other.levels}) "
                             f"into (d={self.dim}, levels={self.levels})")
        for name, stats in other.arms.items():
            self.arm(name).merge(stats)

    def copy(self) -> PolicyStatistics:
        return PolicyStatistics(self.dim, self.levels, {k: v.copy() for k, v in self.arms.items()})

    def empty_like(self) -> PolicyStatistics:
        return PolicyStatistics(self.dim, self.levels)

    @property
    def total_pulls(self) -> int:
        return sum(a.pulls for a in self.arms.values())

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "levels": list(self.levels), "arms": {
            name: {"gram": _pack(a.gram), "moment": _pack(a.moment), "rank_counts": _pack(a.rank_counts),
                   "pulls": a.pulls, "reward_sum": a.reward_sum} for name, a in self.arms.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyStatistics:
        dim, levels = int(d["dim"]), tuple(int(v) for v in d["levels"])
        arms = {name: ArmStatistics(_unpack(a["gram"], (dim, dim)), _unpack(a["moment"], (dim,)),
                                    _unpack(a["rank_counts"], (len(levels) + 1,)), int(a["pulls"]),
                                    float(a["reward_sum"])) for name, a in d.get("arms", {}).items()}
        return cls(dim, levels, arms)
