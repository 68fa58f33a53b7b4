"""Byzantine-robust aggregators: coordinate-wise median, trimmed mean, Krum and Multi-Krum.

Each resists a minority of arbitrary (outlying or malicious) updates where FedAvg does not: one
update scaled by 1e6 moves the FedAvg mean by ~1e6 / n but leaves these nearly unmoved. They need
every update in memory at once (O(n * d)); Krum also compares every pair (O(n^2 * d)) and is
capped by :data:`KRUM_MAX_WORK`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from parity.core.fl.aggregation import (
    ClientUpdate,
    TensorMap,
    Weights,
    checked_updates,
    fedavg,
    stack_tensor,
)
from parity.core.fl.errors import AggregationError

__all__ = ["KRUM_MAX_WORK", "fedmedian", "krum", "krum_scores", "trimmed_mean"]

# Pairwise distances cost n^2 * d multiply-adds: 4e9 is a few seconds of numpy on one core
# (e.g. 100 updates of a 400k-parameter model).
KRUM_MAX_WORK = 4_000_000_000

Updates = Sequence[ClientUpdate | tuple[TensorMap, int]]


def fedmedian(updates: Updates) -> Weights:
    """Coordinate-wise median of the models, unweighted (Yin et al. 2018, "Byzantine-Robust
    Distributed Learning: Towards Optimal Statistical Rates"; Flower's FedMedian)."""
    checked = checked_updates(updates)
    return {
        name: np.median(stack_tensor(checked, name), axis=0).astype(np.float32)
        for name in checked[0].weights
    }


def trimmed_mean(updates: Updates, beta: float) -> Weights:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018): per coordinate, sort the n values,
    drop the ``k = floor(beta * n)`` smallest and the k largest, average the rest, unweighted.
    ``0 <= beta < 0.5``; at least one value must remain."""
    checked = checked_updates(updates)
    n = len(checked)
    k = int(np.floor(beta * n))
    if n - 2 * k < 1:
        raise AggregationError("beta", f"beta={beta:g} trims all {n} updates")
    result: Weights = {}
    for name in checked[0].weights:
        ordered = np.sort(stack_tensor(checked, name), axis=0)
        result[name] = ordered[k : n - k].mean(axis=0).astype(np.float32)
    return result


def _flatten(updates: Sequence[ClientUpdate]) -> NDArray[np.float64]:
    names = list(updates[0].weights)
    return np.stack(
        [
            np.concatenate([np.asarray(u.weights[n], dtype=np.float64).ravel() for n in names])
            for u in updates
        ]
    )


def krum_scores(
    updates: Updates, num_malicious: int, *, max_work: int = KRUM_MAX_WORK
) -> list[float]:
    """Krum score of each update (Blanchard et al. 2017, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent"): the sum of squared L2 distances to its
    ``n - f - 2`` nearest other updates, ``f = num_malicious``. Needs ``n >= 2f + 3``."""
    checked = checked_updates(updates)
    n = len(checked)
    if n < 2 * num_malicious + 3:
        raise AggregationError(
            "num_malicious",
            f"krum with num_malicious={num_malicious} needs at least {2 * num_malicious + 3} "
            f"updates, got {n}",
        )
    flat = _flatten(checked)
    work = n * n * flat.shape[1]
    if work > max_work:
        raise AggregationError(
            "updates",
            f"krum over {n} updates of {flat.shape[1]} parameters needs {work:.3g} operations, "
            f"above the cap of {max_work:.3g}",
        )
    # Direct differences rather than the |a|^2 + |b|^2 - 2ab expansion, which cancels badly when
    # updates are close to each other (the honest case).
    distances = np.zeros((n, n))
    for i in range(n):
        diff = flat[i + 1 :] - flat[i]
        d = np.einsum("ij,ij->i", diff, diff)
        distances[i, i + 1 :] = d
        distances[i + 1 :, i] = d
    neighbours = n - num_malicious - 2
    scores = []
    for i in range(n):
        others = np.delete(distances[i], i)
        scores.append(float(np.sort(others)[:neighbours].sum()))
    return scores


def krum(
    updates: Updates,
    num_malicious: int,
    num_selected: int = 1,
    *,
    max_work: int = KRUM_MAX_WORK,
) -> tuple[Weights, list[int]]:
    """Krum (``num_selected == 1``: the model with the lowest score) or Multi-Krum (the
    example-weighted mean of the ``num_selected`` lowest-scoring models, as Flower's MultiKrum).
    Returns the model and the indices of the selected updates, best first; ties go to the
    earlier update."""
    checked = checked_updates(updates)
    if not 1 <= num_selected <= len(checked):
        raise AggregationError(
            "num_selected",
            f"num_selected must be between 1 and the number of updates ({len(checked)})",
        )
    scores = krum_scores(checked, num_malicious, max_work=max_work)
    selected = [int(i) for i in np.argsort(scores, kind="stable")[:num_selected]]
    if num_selected == 1:
        chosen = checked[selected[0]].weights
        return {n: np.asarray(a, dtype=np.float32).copy() for n, a in chosen.items()}, selected
    return fedavg([checked[i] for i in selected]), selected
