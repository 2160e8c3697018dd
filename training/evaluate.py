"""Offline evaluation of a propensity model: ranking, probability quality, lift, and plots.

All metric functions take `y` (0/1 outcomes) and `p` (predicted probabilities) as 1-d arrays of
equal length. They depend on numpy only; the plots use matplotlib with the Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_EPS = 1e-15


def _arrays(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"y and p differ in length: {ya.size} != {pa.size}")
    if ya.size == 0:
        raise ValueError("no rows to evaluate")
    bad = int(np.count_nonzero(~np.isfinite(pa)))
    if bad:
        raise ValueError(f"{bad} of {pa.size} scores are not finite numbers")
    return ya, pa


def _average_ranks(x: FloatArray) -> FloatArray:
    """1-based ranks of `x`, ties sharing the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # start of each run of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half). NaN with one class."""
    ya, pa = _arrays(y, p)
    pos = ya > 0.5
    n_pos = int(pos.sum())
    n_neg = ya.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(pa)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-15, 1 - 1e-15]."""
    ya, pa = _arrays(y, p)
    pc = np.clip(pa, _EPS, 1.0 - _EPS)
    return float(-np.mean(ya * np.log(pc) + (1.0 - ya) * np.log1p(-pc)))


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean squared error of the probabilities."""
    ya, pa = _arrays(y, p)
    return float(np.mean((pa - ya) ** 2))


def _bin_index(p: FloatArray, bins: int) -> npt.NDArray[np.intp]:
    return np.clip(np.floor(p * bins), 0, bins - 1).astype(np.intp)


def calibration_bins(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10) -> list[dict[str, float]]:
    """Per non-empty equal-width bin of [0, 1]: bounds, row count, mean predicted, observed rate."""
    ya, pa = _arrays(y, p)
    idx = _bin_index(pa, bins)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=pa, minlength=bins)
    sum_y = np.bincount(idx, weights=ya, minlength=bins)
    return [
        {
            "lo": b / bins,
            "hi": (b + 1) / bins,
            "n": float(count[b]),
            "mean_p": float(sum_p[b] / count[b]),
            "rate": float(sum_y[b] / count[b]),
        }
        for b in range(bins)
        if count[b]
    ]


def expected_calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10) -> float:
    """ECE: over equal-width bins, the row-weighted mean of |mean predicted - observed rate|."""
    ya, _ = _arrays(y, p)
    return float(sum(b["n"] * abs(b["mean_p"] - b["rate"]) for b in calibration_bins(y, p, bins)) / ya.size)


def _deciles(y: FloatArray, score: FloatArray, overall: float) -> list[dict[str, float]]:
    order = np.argsort(-score, kind="mergesort")  # best first; ties keep row order
    out = []
    for d, part in enumerate(np.array_split(order, 10)):
        if part.size == 0:
            continue
        rate = float(y[part].mean())
        out.append(
            {
                "decile": float(d + 1),
                "n": float(part.size),
                "mean_score": float(score[part].mean()),
                "rate": rate,
                "lift": rate / overall if overall > 0 else float("nan"),
            }
        )
    return out


def lift_by_decile(y: npt.ArrayLike, p: npt.ArrayLike, baseline_p: npt.ArrayLike) -> dict[str, Any]:
    """Acceptance rate and lift (rate / overall rate) per decile of score, decile 1 = highest.

    Returns `{"overall_rate", "model": [...], "baseline": [...]}`, the baseline ranked by its own
    score (the catalog's prior propensity).
    """
    ya, pa = _arrays(y, p)
    _, ba = _arrays(y, baseline_p)
    overall = float(ya.mean())
    return {"overall_rate": overall, "model": _deciles(ya, pa, overall), "baseline": _deciles(ya, ba, overall)}


def metrics(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10) -> dict[str, float]:
    """auc, log_loss, brier and ece of `p`."""
    return {
        "auc": auc(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p, bins),
    }


# -- plots -------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(y: npt.ArrayLike, curves: Mapping[str, npt.ArrayLike], path: Path, bins: int = 10) -> Path:
    """Reliability diagram: observed rate against mean predicted probability per bin."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    top = 0.0
    for label, p in curves.items():
        b = calibration_bins(y, p, bins)
        xs = [r["mean_p"] for r in b]
        ys = [r["rate"] for r in b]
        top = max(top, *xs, *ys)
        ece = expected_calibration_error(y, p, bins)
        ax.plot(xs, ys, marker="o", label=f"{label} (ECE {ece:.4f})")
    lim = min(1.0, top * 1.1 + 0.01)
    ax.plot([0, lim], [0, lim], linestyle="--", color="grey", label="perfect")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed acceptance rate")
    ax.set_title("Calibration (validation)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lift(lift: Mapping[str, Any], path: Path) -> Path:
    """Lift per score decile, model against the prior-propensity baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.4
    for k, (key, label) in enumerate((("model", "model"), ("baseline", "prior baseline"))):
        rows = lift[key]
        xs = np.array([r["decile"] for r in rows]) + (k - 0.5) * width
        ax.bar(xs, [r["lift"] for r in rows], width=width, label=label)
    ax.axhline(1.0, color="grey", linestyle="--")
    ax.set_xticks(range(1, 11))
    ax.set_xlabel("score decile (1 = highest)")
    ax.set_ylabel("lift (rate / overall rate)")
    ax.set_title(f"Lift by decile (overall rate {lift['overall_rate']:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_importance(names: Sequence[str], gain: npt.ArrayLike, path: Path, top: int = 25) -> Path:
    """Horizontal bar chart of total split gain per feature, largest first."""
    plt = _pyplot()
    g = np.asarray(gain, dtype=np.float64)
    order = np.argsort(-g, kind="mergesort")[:top]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(order) + 1.5))
    ax.barh([names[i] for i in order][::-1], g[order][::-1])
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance (gain)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
