"""Fidelity metrics of one explanation against its ground truth (docs/fidelity.md).

Every function takes per-unit arrays over the *context units* of one item (the units the ground
truth talks about: the image tiles and the words before "\\nQuestion:"), in the same order:

  x: the method's relevance of each unit for the target, summed over target tokens; negative
     relevance (evidence against the target) is clipped to 0 by `clip_relevance` before the
     precision/recall metrics, as the paper's metric needs x >= 0.
  y: the ground truth in [0, 1]: for text evidence 1 for the words of the answering sentence,
     else 0; for image evidence the fraction of each patch covered by the relevant shape(s).

Pure functions over numpy arrays; no model in here (tests/fidelity checks them by hand).
"""

from __future__ import annotations

import numpy as np


def clip_relevance(x) -> np.ndarray:
    """Relevance as the metrics read it: float64, negative values set to 0."""
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def precision(x, y) -> float:
    """The paper's precision: sum(x * y) / sum(x), 0 when sum(x) is 0 (nothing was marked)."""
    x, y = clip_relevance(x), np.asarray(y, dtype=np.float64)
    total = x.sum()
    return float((x * y).sum() / total) if total > 0 else 0.0


def recall(x, y) -> float:
    """The paper's recall: sum((x / max x) * y) / sum(y), 0 when max x is 0."""
    x, y = clip_relevance(x), np.asarray(y, dtype=np.float64)
    top = x.max() if x.size else 0.0
    if top <= 0 or y.sum() <= 0:
        return 0.0
    return float(((x / top) * y).sum() / y.sum())


def pointing_hit(x, y) -> float:
    """1 when the most relevant unit lies in the ground truth (y > 0), else 0. Ties go to the
    first unit in order; an all-zero (after clipping) explanation counts as a miss."""
    x, y = clip_relevance(x), np.asarray(y, dtype=np.float64)
    if x.size == 0 or x.max() <= 0:
        return 0.0
    return float(y[int(np.argmax(x))] > 0)


def deletion_order(x) -> np.ndarray:
    """Unit indices most relevant first (raw, unclipped relevance; ties by unit order)."""
    x = np.asarray(x, dtype=np.float64)
    return np.argsort(-x, kind="stable")


def deletion_counts(n_units: int, fractions) -> list[int]:
    """How many units are removed at each fraction of the context: round(f * n)."""
    return [int(round(f * n_units)) for f in fractions]


def area_over_curve(probabilities) -> float:
    """Area over the target-probability deletion curve (AOPC): the mean over the curve's
    points of p_0 - p_k, p_0 the probability with nothing removed (the first point). Higher
    means the units the method ranks first matter more to the model."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float((p[0] - p).mean())
