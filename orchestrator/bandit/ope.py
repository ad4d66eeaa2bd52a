"""Off-policy estimators: the value of a target policy π from searches logged under a policy μ.

Open Bandit Pipeline style (Saito et al., ``obp.ope``): every estimator takes the same arrays,

* ``reward``: shape (n_rounds,), R_i, the system reward of search i;
* ``action``: shape (n_rounds,), integers in [0, n_actions), the index of the logged action A_i
  (here a budget vector over arms);
* ``pscore``: shape (n_rounds,), μ(A_i | x_i) > 0, the logging policy's propensity of A_i;
* ``action_dist``: shape (n_rounds, n_actions), π(A | x_i), each row a distribution;
* ``estimated_rewards``: shape (n_rounds, n_actions), R̂(x_i, A), for :class:`DoublyRobust` only
  (cross-fitted by :class:`RidgeRewardModel`);

and offers ``estimate_policy_value`` (the point estimate), ``round_rewards`` (per-search terms
whose mean is the estimate) and ``estimate_interval`` (a percentile bootstrap over searches).

Every estimate is a ratio V̂ = Σ_i a_i / Σ_i b_i of per-search terms (b_i = 1 except for SNIPS),
so one bootstrap routine (:func:`bootstrap_interval`) serves all of them, and several estimators
or targets resampled with the same seed share the same resamples (common random numbers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import scipy.linalg

PROBABILITY_TOLERANCE = 1e-6  # rows of action_dist must sum to 1 within this
BOOTSTRAP_CELLS = 1 << 22  # resample-count cells held at once (32 MiB of float64)


class Interval(NamedTuple):
    """A bootstrap interval: ``mean`` is the estimate on the full log, ``low``/``high`` the
    α/2 and 1 − α/2 percentiles of the resampled estimates."""

    low: float
    mean: float
    high: float


def _float_vector(name: str, values: object, n: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (n_rounds,), got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} rounds, reward has {n}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    return array


def check_bandit_arrays(reward: object, action: object, pscore: object, action_dist: object,
                        estimated_rewards: object | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert the estimators' inputs (see the module docstring for shapes);
    raises ValueError naming the offending array."""
    reward_ = _float_vector("reward", reward)
    n = reward_.shape[0]
    if n == 0:
        raise ValueError("no rounds: reward is empty")
    action_raw = np.asarray(action)
    if action_raw.ndim != 1 or action_raw.shape[0] != n:
        raise ValueError(f"action must have shape ({n},), got {action_raw.shape}")
    if action_raw.dtype.kind not in "iu":
        raise ValueError(f"action must hold integer action indices, got dtype {action_raw.dtype}")
    action_ = action_raw.astype(np.int64)
    pscore_ = _float_vector("pscore", pscore, n)
    if np.any(pscore_ <= 0) or np.any(pscore_ > 1 + PROBABILITY_TOLERANCE):
        raise ValueError("pscore must be in (0, 1]: a logged action needs a positive propensity")
    dist = np.asarray(action_dist, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != n:
        raise ValueError(f"action_dist must have shape ({n}, n_actions), got {dist.shape}")
    if not np.all(np.isfinite(dist)) or np.any(dist < 0) or np.any(dist > 1 + PROBABILITY_TOLERANCE):
        raise ValueError("action_dist must hold probabilities in [0, 1]")
    sums = dist.sum(axis=1)
    if np.any(np.abs(sums - 1) > PROBABILITY_TOLERANCE):
        i = int(np.argmax(np.abs(sums - 1)))
        raise ValueError(f"action_dist rows must sum to 1; row {i} sums to {sums[i]:.6g}")
    if np.any(action_ < 0) or np.any(action_ >= dist.shape[1]):
        raise ValueError(f"action indices must be in [0, {dist.shape[1]}), got [{action_.min()}, {action_.max()}]")
    estimated = None
    if estimated_rewards is not None:
        estimated = np.asarray(estimated_rewards, dtype=np.float64)
        if estimated.shape != dist.shape:
            raise ValueError(f"estimated_rewards must have the shape of action_dist {dist.shape}, got {estimated.shape}")
        if not np.all(np.isfinite(estimated)):
            raise ValueError("estimated_rewards has non-finite values")
    return reward_, action_, pscore_, dist, estimated


def importance_weights(action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray) -> np.ndarray:
    """w_i = π(A_i | x_i) / μ(A_i | x_i), shape (n_rounds,)."""
    return action_dist[np.arange(action.shape[0]), action] / pscore


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw²: n when every weight is equal, small when a few
    searches carry the estimate; 0 when every weight is 0."""
    squares = float(np.sum(np.square(weights)))
    return float(np.sum(weights)) ** 2 / squares if squares > 0 else 0.0


def check_bootstrap_options(n_bootstrap: int, alpha: float) -> None:
    """Raise ValueError unless n_bootstrap is a positive integer and 0 < alpha < 1."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def bootstrap_interval(numerators: np.ndarray, denominators: np.ndarray, *, n_bootstrap: int = 2000,
                       alpha: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap of ratio estimates V = Σ_i a_i / Σ_i b_i, resampling whole rounds.

    ``numerators`` and ``denominators``: shape (n_rounds,) or (n_rounds, n_estimates), one column
    per estimate; every column sees the same resamples. Returns (low, high), each of shape
    (n_estimates,) (shape (1,) for 1-D input): the α/2 and 1 − α/2 percentiles of the resampled
    ratios. A resample whose Σ b_i is 0 has no value and is left out of the percentiles.
    The resamples depend only on ``seed``, n_rounds and ``n_bootstrap``.
    """
    check_bootstrap_options(n_bootstrap, alpha)
    a = np.asarray(numerators, dtype=np.float64)
    b = np.asarray(denominators, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[0] == 0:
        raise ValueError(f"numerators and denominators must share a shape (n_rounds[, n_estimates]), got {a.shape}, {b.shape}")
    a2, b2 = (a[:, None], b[:, None]) if a.ndim == 1 else (a, b)
    n = a2.shape[0]
    rng = np.random.default_rng(seed)
    # Resample counts times the terms is one matrix product per chunk of resamples.
    chunk = max(1, min(n_bootstrap, BOOTSTRAP_CELLS // n))
    values = np.empty((n_bootstrap, a2.shape[1]), dtype=np.float64)
    offsets = np.arange(chunk)[:, None] * n
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, n, size=(size, n)) + offsets[:size]
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            values[start:start + size] = (counts @ a2) / (counts @ b2)
    values[~np.isfinite(values)] = np.nan
    low = np.full(a2.shape[1], np.nan)
    high = np.full(a2.shape[1], np.nan)
    defined = ~np.all(np.isnan(values), axis=0)
    if np.any(defined):
        low[defined], high[defined] = np.nanpercentile(values[:, defined], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


@dataclass(frozen=True)
class OffPolicyEstimator(ABC):
    """The shared part of the estimators: each defines its per-round ratio terms (a_i, b_i),
    and V̂ = Σ a_i / Σ b_i."""

    estimator_name: ClassVar[str] = "estimator"

    @abstractmethod
    def ratio_terms(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                    estimated_rewards: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(a, b), each shape (n_rounds,), on validated arrays (see :func:`check_bandit_arrays`)."""

    def _terms(self, reward: object, action: object, pscore: object, action_dist: object,
               estimated_rewards: object | None) -> tuple[np.ndarray, np.ndarray]:
        return self.ratio_terms(*check_bandit_arrays(reward, action, pscore, action_dist, estimated_rewards))

    def estimate_policy_value(self, reward: object, action: object, pscore: object, action_dist: object,
                              estimated_rewards: object | None = None) -> float:
        """V̂, a float; NaN when the denominator is 0 (SNIPS with every weight 0)."""
        a, b = self._terms(reward, action, pscore, action_dist, estimated_rewards)
        denominator = float(np.sum(b))
        return float(np.sum(a)) / denominator if denominator != 0 else float("nan")

    def round_rewards(self, reward: object, action: object, pscore: object, action_dist: object,
                      estimated_rewards: object | None = None) -> np.ndarray:
        """Per-round contributions, shape (n_rounds,), whose mean is V̂: a_i / mean(b)."""
        a, b = self._terms(reward, action, pscore, action_dist, estimated_rewards)
        mean_b = float(np.mean(b))
        return a / mean_b if mean_b != 0 else np.full_like(a, np.nan)

    def estimate_interval(self, reward: object, action: object, pscore: object, action_dist: object,
                          estimated_rewards: object | None = None, *, n_bootstrap: int = 2000, alpha: float = 0.05,
                          seed: int = 0) -> Interval:
        """(low, mean, high): the point estimate and its 1 − α percentile bootstrap interval from
        ``n_bootstrap`` resamples of whole searches (see :func:`bootstrap_interval`). With heavy-tailed
        weights such intervals under-cover; check coverage in simulation."""
        a, b = self._terms(reward, action, pscore, action_dist, estimated_rewards)
        low, high = bootstrap_interval(a, b, n_bootstrap=n_bootstrap, alpha=alpha, seed=seed)
        denominator = float(np.sum(b))
        return Interval(float(low[0]), float(np.sum(a)) / denominator if denominator != 0 else float("nan"), float(high[0]))


def _check_max_weight(max_weight: float | None) -> None:
    if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, (int, float))
                                   or not np.isfinite(max_weight) or max_weight <= 0):
        raise ValueError(f"max_weight must be a positive finite number or None, got {max_weight!r}")


@dataclass(frozen=True)
class IPS(OffPolicyEstimator):
    """Inverse propensity scoring (Horvitz–Thompson):

        V̂_IPS = (1/n) Σ_i min(w_i, M) · R_i,   w_i = π(A_i | x_i) / μ(A_i | x_i).

    Unbiased when μ(A | x) > 0 wherever π(A | x) > 0 and no clipping (``max_weight`` M = None,
    the default). Clipping at M bounds the variance by M² and biases the estimate towards 0 for
    non-negative rewards (Bottou et al., JMLR 2013). Shapes: see the module docstring.
    """

    max_weight: float | None = None
    estimator_name: ClassVar[str] = "ips"

    def __post_init__(self) -> None:
        _check_max_weight(self.max_weight)

    def weights(self, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray) -> np.ndarray:
        w = importance_weights(action, pscore, action_dist)
        return w if self.max_weight is None else np.minimum(w, self.max_weight)

    def ratio_terms(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                    estimated_rewards: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.weights(action, pscore, action_dist) * reward, np.ones_like(reward)


@dataclass(frozen=True)
class SNIPS(OffPolicyEstimator):
    """Self-normalised IPS (Swaminathan & Joachims, NeurIPS 2015):

        V̂_SNIPS = Σ_i w_i · R_i / Σ_i w_i,   w_i = π(A_i | x_i) / μ(A_i | x_i).

    Biased by O(1/n) but consistent, bounded by the range of R, and usually of lower variance
    than IPS; NaN when every w_i is 0 (the log holds no action the target takes). Shapes: see
    the module docstring.
    """

    estimator_name: ClassVar[str] = "snips"

    def ratio_terms(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                    estimated_rewards: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        w = importance_weights(action, pscore, action_dist)
        return w * reward, w


@dataclass(frozen=True)
class DoublyRobust(OffPolicyEstimator):
    """Doubly robust (Dudík, Langford & Li, ICML 2011):

        V̂_DR = (1/n) Σ_i [ Σ_A π(A | x_i) · R̂(x_i, A) + min(w_i, M) · (R_i − R̂(x_i, A_i)) ].

    The direct term uses the reward model, the weighted residual corrects its bias: unbiased if
    either the propensities or R̂ are right, and of lower variance than IPS when R̂ is close to
    E[R | x, A]. R̂ must not have seen the search it predicts (cross-fitting,
    :meth:`RidgeRewardModel.cross_fit_predict`). The bootstrap treats R̂ as fixed, so intervals
    leave out the reward model's own variance. ``estimated_rewards`` (n_rounds, n_actions) is
    required; other shapes: see the module docstring.
    """

    max_weight: float | None = None
    estimator_name: ClassVar[str] = "dr"

    def __post_init__(self) -> None:
        _check_max_weight(self.max_weight)

    def ratio_terms(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                    estimated_rewards: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if estimated_rewards is None:
            raise ValueError("DoublyRobust needs estimated_rewards (n_rounds, n_actions) from a reward model")
        w = importance_weights(action, pscore, action_dist)
        if self.max_weight is not None:
            w = np.minimum(w, self.max_weight)
        direct = np.sum(action_dist * estimated_rewards, axis=1)
        residual = reward - estimated_rewards[np.arange(action.shape[0]), action]
        return direct + w * residual, np.ones_like(reward)


@dataclass(frozen=True)
class RidgeRewardModel:
    """R̂(x, A) for :class:`DoublyRobust`: a shared ridge model over action features plus a ridge
    model per action on its residuals, cross-fitted over ``n_folds`` folds of searches.

        R̂(x, A) = zᵀ Θ f(A) + zᵀ β_A,   z = [1, x],
        Θ   = argmin Σ_i (R_i − z_iᵀ Θ f(A_i))² + λ‖Θ‖²      (all searches of the other folds),
        β_A = argmin Σ_{i: A_i = A} (R_i − z_iᵀ Θ f(A) − z_iᵀ β)² + λ‖β‖²   (per action).

    f(A) (shape (n_actions, n_action_features)) describes an action, e.g. which arms run and with
    what share of the budget: the shared term lets actions with few searches borrow strength from
    those running the same arms, and gives an action the log never took a prediction from its
    arms alone (β_A = 0). Without ``action_features`` only the per-action models are fitted (one
    ridge per action on [1, x]). Predictions are clipped to the training rewards' range. A linear
    probability model rather than a logistic one: rewards may be graded, and the normal equations
    are exact and cheap: O(n·D² + D³) for the shared term, D = (d + 1)·n_action_features, plus
    O(n·d² + n_actions·d³) for the per-action terms, per fold.

    ``l2``: λ (applies to the intercepts too); ``n_folds``: K ≥ 2; ``seed``: the fold split.
    """

    l2: float = 1.0
    n_folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not np.isfinite(self.l2) or self.l2 <= 0:
            raise ValueError(f"l2 must be a positive finite number, got {self.l2!r}")
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ValueError(f"n_folds must be an integer >= 2 (cross-fitting), got {self.n_folds!r}")

    def describe(self) -> str:
        return (f"ridge: shared over [1, x] ⊗ f(A) plus per action on [1, x], λ={self.l2:g}, "
                f"cross-fitted over {self.n_folds} folds")

    def cross_fit_predict(self, context: object, action: object, reward: object, n_actions: int,
                          action_features: object | None = None) -> np.ndarray:
        """R̂ for every search and action, shape (n_rounds, n_actions); row i comes from the model
        fitted without search i's fold.

        ``context``: (n_rounds, d); ``action``: (n_rounds,) indices; ``reward``: (n_rounds,);
        ``action_features``: (n_actions, p) or None (per-action models only)."""
        x = np.asarray(context, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"context must have shape (n_rounds, d), got {x.shape}")
        r = _float_vector("reward", reward, x.shape[0])
        a = np.asarray(action)
        if a.shape != r.shape or a.dtype.kind not in "iu":
            raise ValueError(f"action must be integer indices of shape {r.shape}, got {a.dtype} {a.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("context has non-finite values")
        features = None
        if action_features is not None:
            features = np.asarray(action_features, dtype=np.float64)
            if features.ndim != 2 or features.shape[0] != n_actions or not np.all(np.isfinite(features)):
                raise ValueError(f"action_features must be finite with shape ({n_actions}, p), got {features.shape}")
        if a.size and (a.min() < 0 or a.max() >= n_actions):
            raise ValueError(f"action indices must be in [0, {n_actions})")
        n = x.shape[0]
        if n < self.n_folds:
            raise ValueError(f"cross-fitting over {self.n_folds} folds needs at least {self.n_folds} searches, got {n}")
        z = np.hstack([np.ones((n, 1)), x])
        folds = np.array_split(np.random.default_rng(self.seed).permutation(n), self.n_folds)
        predictions = np.empty((n, n_actions), dtype=np.float64)
        for held_out in folds:
            train = np.ones(n, dtype=bool)
            train[held_out] = False
            predictions[held_out] = np.clip(self._fit_predict(z[train], a[train], r[train], features, z[held_out], n_actions),
                                            r[train].min(), r[train].max())
        return predictions

    def _fit_predict(self, z: np.ndarray, action: np.ndarray, reward: np.ndarray, features: np.ndarray | None,
                     z_new: np.ndarray, n_actions: int) -> np.ndarray:
        """Fit on (z, action, reward), predict every action for z_new: shape (len(z_new), n_actions)."""
        dz = z.shape[1]
        eye = self.l2 * np.eye(dz)
        groups = [(act, action == act) for act in np.unique(action)]
        grams = {int(act): z[rows].T @ z[rows] for act, rows in groups}
        predictions = np.zeros((z_new.shape[0], n_actions))
        residual = reward
        if features is not None:
            # Rows sharing an action share f(A): ΦᵀΦ = Σ_A (Z_Aᵀ Z_A) ⊗ (f_A f_Aᵀ) and
            # ΦᵀR = Σ_A (Z_Aᵀ R_A) ⊗ f_A, so Φ (n × D) is never formed.
            p = features.shape[1]
            gram = np.zeros((dz * p, dz * p))
            moment = np.zeros(dz * p)
            for act, rows in groups:
                f = features[act]
                gram += np.kron(grams[int(act)], np.outer(f, f))
                moment += np.kron(z[rows].T @ reward[rows], f)
            gram[np.diag_indices_from(gram)] += self.l2
            theta = scipy.linalg.solve(gram, moment, assume_a="pos").reshape(dz, p)
            residual = reward - np.sum((z @ theta) * features[action], axis=1)
            predictions += z_new @ theta @ features.T
        for act, rows in groups:
            beta = scipy.linalg.solve(grams[int(act)] + eye, z[rows].T @ residual[rows], assume_a="pos")
            predictions[:, act] += z_new @ beta
        return predictions
