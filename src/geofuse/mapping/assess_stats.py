"""Stratified estimators of map accuracy and class area (Olofsson et al. 2014).

Convention, kept everywhere in ``geofuse assess``: in an error matrix **rows are map classes
and columns are reference classes**; ``counts[i, j]`` is the number of reference samples mapped
as class ``i`` whose reference class is ``j``. The strata are the map classes, ``W_i`` the
share of the mapped area in class ``i``.

Formulas (Olofsson, Foody, Herold, Stehman, Woodcock & Wulder 2014, Remote Sensing of
Environment 148, 42-57; equation numbers theirs):

- estimated area proportions ``p_ij = W_i n_ij / n_i.`` (eq. 4)
- overall accuracy ``O = sum_j p_jj``, user's ``U_i = p_ii / p_i. = n_ii / n_i.``, producer's
  ``P_j = p_jj / p_.j`` (eqs. 1-3)
- ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)`` (eq. 5),
  ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)`` (eq. 6) and the producer's accuracy variance of
  eq. 7, written with ``W_i`` in place of ``N_i.`` (the ratio is scale free)
- area proportion of class ``k``: ``p_.k = sum_i W_i n_ik / n_i.`` (eq. 9) with
  ``S(p_.k) = sqrt(sum_i W_i^2 (n_ik / n_i.)(1 - n_ik / n_i.) / (n_i. - 1))`` (eq. 10);
  area ``A p_.k`` (eq. 11), its 95 % interval ``A p_.k +- 1.96 A S(p_.k)`` (eq. 12)
- sample size for a target standard error of overall accuracy
  ``n = (sum_i W_i S_i / S(O))^2`` with ``S_i = sqrt(U_i (1 - U_i))`` (eq. 13, Cochran 1977
  eq. 5.25)

A stratum (map class) with mapped area but no reference sample cannot be estimated: its row
is left out, the class's own area, user's and producer's accuracy are undefined (NaN), and
the other classes' figures cover the sampled strata only (``covered_share`` < 1). A stratum
with a single sample has undefined variances (``n_i. - 1 = 0``): the standard errors that
involve it are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The normal quantile of the paper's 95 % intervals.
Z95 = 1.96


@dataclass(frozen=True)
class StratifiedEstimate:
    """Accuracy and area-proportion estimates from a stratified sample (map classes = strata).

    Every per-class array has one entry per class, in the order of the error matrix; NaN marks
    a figure that cannot be estimated (see the module docstring).

    Attributes:
        counts: sample error matrix, rows map class, columns reference class.
        weights: ``W_i``, the mapped-area share of each map class (sums to 1).
        proportions: ``p_ij``, the error matrix in estimated area proportions.
        overall: overall accuracy over the sampled strata.
        overall_se: its standard error.
        users: user's accuracy ``U_i``.
        users_se: standard errors of ``U_i``.
        producers: producer's accuracy ``P_j``.
        producers_se: standard errors of ``P_j``.
        area: estimated area proportion ``p_.k`` of each class (share of the whole map).
        area_se: standard errors of ``p_.k``.
        unsampled: map classes with mapped area but no reference sample.
        covered_share: share of the mapped area in sampled strata (1 when none is missing).
    """

    counts: np.ndarray
    weights: np.ndarray
    proportions: np.ndarray
    overall: float
    overall_se: float
    users: np.ndarray
    users_se: np.ndarray
    producers: np.ndarray
    producers_se: np.ndarray
    area: np.ndarray
    area_se: np.ndarray
    unsampled: np.ndarray
    covered_share: float


def _variance_divisor(n_row: np.ndarray) -> np.ndarray:
    """``n_i. - 1``, NaN where a stratum has fewer than two samples (no variance estimate)."""
    return np.where(n_row > 1, n_row - 1.0, np.nan)


def stratified_estimate(counts: np.ndarray, weights: Sequence[float] | np.ndarray
                        ) -> StratifiedEstimate:
    """Olofsson et al. (2014) estimates from a sample error matrix and the strata weights.

    Args:
        counts: (K, K) sample counts, rows map class, columns reference class.
        weights: mapped area (or pixel count, or share) of each map class; normalised here.

    Returns:
        The estimates; see :class:`StratifiedEstimate`.
    """
    n = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    n_row = n.sum(axis=1)
    sampled = n_row > 0
    unsampled = (~sampled) & (w > 0)
    safe_row = np.where(sampled, n_row, 1.0)
    frac = np.where(sampled[:, None], n / safe_row[:, None], 0.0)  # n_ij / n_i.
    p = w[:, None] * frac
    div = _variance_divisor(n_row)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        # eq. 10 terms; strata without samples contribute nothing (their rows are left out)
        terms = np.where(sampled[:, None], w[:, None] ** 2 * frac * (1 - frac) / div, 0.0)
        users = np.where(sampled, np.diag(frac), np.nan)
        users_var = users * (1 - users) / div[:, 0]
        covered = float(w[sampled].sum())
        w_cov = np.where(sampled, w, 0.0) / covered if covered > 0 else w * np.nan
        overall = float(np.nansum(w_cov * np.nan_to_num(users)))
        overall_var = float(np.sum(np.where(sampled, w_cov**2 * users_var, 0.0)))
        area = p.sum(axis=0)
        area_se = np.sqrt(terms.sum(axis=0))
        producers, producers_se = _producers(p, area, w, users, users_var, terms)
    area = np.where(unsampled, np.nan, area)
    area_se = np.where(unsampled, np.nan, area_se)
    return StratifiedEstimate(
        counts=np.asarray(counts), weights=w, proportions=p, overall=overall,
        overall_se=math.sqrt(overall_var) if math.isfinite(overall_var) else math.nan,
        users=users, users_se=np.sqrt(users_var), producers=producers,
        producers_se=producers_se, area=area, area_se=area_se, unsampled=unsampled,
        covered_share=covered,
    )


def _producers(p: np.ndarray, area: np.ndarray, w: np.ndarray, users: np.ndarray,
               users_var: np.ndarray, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Producer's accuracy ``P_j = p_jj / p_.j`` and its standard error (eq. 7).

    ``terms[i, j]`` is ``W_i^2 (n_ij/n_i.)(1 - n_ij/n_i.)/(n_i. - 1)``; eq. 7 divided through
    by ``N^2`` reads ``V(P_j) = [W_j^2 (1 - P_j)^2 U_j (1 - U_j)/(n_j. - 1)
    + P_j^2 sum_{i != j} terms[i, j]] / p_.j^2``.
    """
    diag = np.diag(p)
    prod = np.where(area > 0, diag / np.where(area > 0, area, 1.0), np.nan)
    # own stratum mapped but unsampled: p_jj unknown; never mapped (W_j = 0): P_j = 0
    prod = np.where(np.isnan(users) & (w > 0), np.nan, prod)
    others = terms.sum(axis=0) - np.diag(terms)
    own = np.where(w > 0, w**2 * (1 - prod) ** 2 * users_var, 0.0)
    var = (own + prod**2 * others) / np.where(area > 0, area, np.nan) ** 2
    return prod, np.sqrt(var)


def cochran_sample_size(weights: Sequence[float] | np.ndarray,
                        expected_users: Sequence[float] | np.ndarray | float,
                        target_se: float) -> int:
    """Total sample size for a target standard error of overall accuracy (Olofsson eq. 13).

    Args:
        weights: mapped-area share (or area) of each map class.
        expected_users: the user's accuracy expected for each class (or one for all).
        target_se: the standard error of overall accuracy to reach (e.g. 0.01).

    Returns:
        ``ceil((sum_i W_i sqrt(U_i (1 - U_i)) / target_se)^2)``.
    """
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    u = np.broadcast_to(np.asarray(expected_users, dtype=float), w.shape)
    spread = float(np.sum(w * np.sqrt(u * (1 - u))))
    return math.ceil(round((spread / target_se) ** 2, 9))
