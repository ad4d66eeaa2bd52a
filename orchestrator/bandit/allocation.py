"""Turning per-arm scores into a budget vector: top-m selection and the greedy marginal budget split.

Shapes: ``B`` rows (one decision, or a batch of Monte Carlo draws of the same decision), ``K``
eligible arms, ``L`` budget levels. An action is a level index per arm, ``-1`` for an arm that
does not run (``level_index``, int (B, K)); :func:`budgets_of` turns a row into candidate counts.

The same vectorised code makes a decision (B = 1) and replays it under posterior draws (B = M),
so Monte Carlo propensities count exactly the actions the policy would take.

Budget curve. ``G_a(n)`` is the share of arm a's engaged items found at within-arm rank ≤ n,
estimated from ``rank_counts`` (:mod:`orchestrator.bandit.stats`) with a weak prior: a few
pseudo-items spread by ``G₀(n) = n / (n + levels[0])`` (concave, so the greedy split is the
classical marginal analysis; defined and increasing before any data).

Greedy split. Every chosen arm starts at ``levels[0]``; while the total allows, the arm with the
largest gain per candidate ``w_a·[G_a(next) − G_a(current)] / (c_a·Δn)`` moves one level up
(``w_a = max(u_a, MIN_WEIGHT)``: the score, kept positive so a negative estimate still lets the
budget curve decide). ``Δn`` is the step's size in candidates: with levels of unequal spacing the
design's "gain of Δ slots" becomes a gain per candidate; with equal spacing both are the same.
Ties go to the arm that comes first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

CURVE_PRIOR_ITEMS = 2.0  # strength of the budget-curve prior, in engaged items
MIN_WEIGHT = 1e-9  # floor of a score used as the split's weight

ActionKey = tuple[tuple[str, int], ...]


def arms_to_run(n_eligible: int, total: int, levels: Sequence[int], max_arms: int) -> int:
    """m = min(max_arms, K, ⌊total / levels[0]⌋): as many arms as allowed and affordable.

    ``BudgetConfig`` guarantees ``min_arms·levels[0] ≤ total``, so m ≥ min(min_arms, K).
    """
    return max(0, min(max_arms, n_eligible, total // levels[0]))


def even_split_level(total: int, levels: Sequence[int], m: int) -> int:
    """Index of the largest level ≤ total / m: the budget each of m arms gets in an even split."""
    if m < 1:
        raise ValueError(f"an even split needs at least one arm, got m={m}")
    share = total // m
    if share < levels[0]:
        raise ValueError(f"{m} arms cannot each get the smallest level {levels[0]} out of {total}")
    return max(j for j, n in enumerate(levels) if n <= share)


def curve_prior(levels: Sequence[int], prior_items: float = CURVE_PRIOR_ITEMS) -> np.ndarray:
    """Pseudo-counts (L + 1,) of the budget-curve prior: prior_items·[G₀(levels[j]) − G₀(levels[j−1])],
    the rest of the mass beyond the largest level; G₀(n) = n / (n + levels[0])."""
    levels_arr = np.asarray(levels, dtype=np.float64)
    prior_cdf = levels_arr / (levels_arr + levels_arr[0])
    return prior_items * np.diff(np.concatenate(([0.0], prior_cdf, [1.0])))


def budget_curve(rank_counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """G(levels[j]) for j < L from ``rank_counts`` (L + 1 buckets, the last beyond the largest level).

    G(levels[j]) = Σ_{i≤j} (counts_i + prior_i) / Σ_i (counts_i + prior_i), with ``prior`` from
    :func:`curve_prior`. Shape (L,), strictly increasing, in (0, 1).
    """
    counts = np.asarray(rank_counts, dtype=np.float64) + prior
    return np.cumsum(counts)[:-1] / counts.sum()


def split_gains(curve: np.ndarray, cost: float, levels: Sequence[int]) -> np.ndarray:
    """Gain per candidate of each step up, [G(levels[j+1]) − G(levels[j])] / (c·Δn_j): shape (L − 1,)."""
    return np.diff(curve) / (cost * np.diff(np.asarray(levels, dtype=np.float64)))


def top_m(keys: np.ndarray, m: int) -> np.ndarray:
    """Boolean (B, K): the m largest ``keys`` per row, ties to the lower arm index (stable sort)."""
    order = np.argsort(-keys, axis=1, kind="stable")[:, :m]
    chosen = np.zeros(keys.shape, dtype=bool)
    chosen[np.arange(len(keys))[:, None], order] = True
    return chosen


def greedy_split(weights: np.ndarray, chosen: np.ndarray, gains: np.ndarray, levels: Sequence[int],
                 total: int) -> np.ndarray:
    """Level index per arm (B, K), -1 where not chosen, by the greedy marginal split (module docstring).

    ``weights`` (B, K) scores; ``chosen`` (B, K) bool; ``gains`` (K, L − 1) from :func:`split_gains`.
    Deterministic; at most m·(L − 1) vectorised steps. :func:`greedy_split_one` is the same rule
    for one row in plain Python (faster for a single decision); the tests hold them equal.
    """
    n_rows, n_arms = weights.shape
    n_levels = len(levels)
    level_index = np.where(chosen, 0, -1)
    if n_levels == 1 or n_arms == 0:
        return level_index
    steps = np.diff(np.asarray(levels, dtype=np.int64))
    smallest_step = int(steps.min())
    # Level index n_levels - 1 (the top; also -1, "not chosen") is a sentinel: a step that never
    # fits and gains -inf.
    step_size = np.append(steps, total + 1)  # (L,)
    step_gain = np.concatenate((gains, np.full((n_arms, 1), -np.inf)), axis=1)  # (K, L)
    weight = np.maximum(weights, MIN_WEIGHT)
    arm_index = np.arange(n_arms)
    row_offset = np.arange(n_rows) * n_arms
    room = total - np.count_nonzero(chosen, axis=1) * levels[0]  # (B,) candidates left
    flat_level = level_index.reshape(-1)  # a view: (row, arm) -> row·K + arm
    for _ in range(n_arms * (n_levels - 1)):
        if room.max() < smallest_step:
            break
        step = step_size[level_index]
        ratio = weight * step_gain[arm_index, level_index]
        ratio[step > room[:, None]] = -np.inf
        best = row_offset + ratio.argmax(axis=1)  # flat (row, arm) of each row's best step
        moving = ratio.reshape(-1)[best] > -np.inf
        if not moving.any():
            break
        room -= step.reshape(-1)[best] * moving
        flat_level[best] += moving
    return level_index


def top_m_one(keys: Sequence[float], m: int) -> list[int]:
    """The indices of the m largest ``keys``, ties to the lower index; ascending. One row of :func:`top_m`."""
    return sorted(sorted(range(len(keys)), key=keys.__getitem__, reverse=True)[:m])  # sorted() is stable


def greedy_split_one(weights: Sequence[float], chosen: Sequence[int], gains: Sequence[Sequence[float]],
                     levels: Sequence[int], total: int) -> list[int]:
    """One row of :func:`greedy_split`: ``chosen`` ascending arm indices, ``gains[a]`` arm a's step gains."""
    level_index = [-1] * len(weights)
    for a in chosen:
        level_index[a] = 0
    spent = len(chosen) * levels[0]
    top = len(levels) - 1
    weight = [max(w, MIN_WEIGHT) for w in weights]
    while True:
        best, best_ratio, best_step = -1, -math.inf, 0
        for a in chosen:  # ascending, and a strict ">" keeps the first arm of a tie, as argmax does
            j = level_index[a]
            if j >= top:
                continue
            step = levels[j + 1] - levels[j]
            if spent + step > total:
                continue
            ratio = weight[a] * gains[a][j]
            if ratio > best_ratio:
                best, best_ratio, best_step = a, ratio, step
        if best < 0:
            return level_index
        level_index[best] += 1
        spent += best_step


def budgets_of(level_index_row: np.ndarray | Sequence[int], arms: Sequence[str], levels: Sequence[int]) -> dict[str, int]:
    """One action row (level indices, -1 = not run) as arm -> candidates (0 = not run), in ``arms`` order."""
    row = level_index_row.tolist() if isinstance(level_index_row, np.ndarray) else level_index_row
    return {arm: (int(levels[j]) if j >= 0 else 0) for arm, j in zip(arms, row)}


def action_key(budgets: Mapping[str, int]) -> ActionKey:
    """Canonical key of a budget vector: the (arm, n) pairs of the arms that run, sorted by arm.

    ``action_probabilities`` of every policy uses it, so a logged ``Decision.budgets`` maps to the
    same key whatever the order of its arms.
    """
    return tuple(sorted((arm, int(n)) for arm, n in budgets.items() if n > 0))


def n_subsets(k: int, m: int) -> int:
    """C(K, m), the number of m-subsets of K eligible arms."""
    return math.comb(k, m)
