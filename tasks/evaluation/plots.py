"""Pictures of a trained model, for MLflow and the Prefect UI: people look at these first."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ae_models.scoring.drift import DriftCheck


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Training and validation loss per epoch."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title="Training and validation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def code_histogram(codes: np.ndarray, path: Path) -> Path:
    """Distribution of code activations over all units (a spike at 0 shows sparsity)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(codes.ravel(), bins=80, color="tab:purple")
    zero = float(np.mean(np.abs(codes) < 1e-6))
    ax.set(
        xlabel="activation",
        ylabel="count",
        title=f"Code activations ({codes.shape[1]} units, {zero:.0%} exactly zero)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def code_projection(codes: np.ndarray, labels: np.ndarray | None, path: Path) -> Path:
    """The codes projected to 2-D (PCA), coloured by label when there are labels."""
    from sklearn.decomposition import PCA

    plt = _plt()
    if codes.shape[1] > 2 and len(codes) >= 2:
        xy = PCA(2).fit_transform(codes)
    else:  # a 1-wide code (or a single row) is drawn along the x axis
        xy = np.column_stack([codes[:, 0], codes[:, 1] if codes.shape[1] > 1 else 0 * codes[:, 0]])
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.5)
    else:
        text = labels.astype(str)
        for value in np.unique(text):
            mask = text == value
            ax.scatter(xy[mask, 0], xy[mask, 1], s=4, alpha=0.6, label=value)
        ax.legend(markerscale=3, fontsize=7, loc="best", ncol=2)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="Codes projected to 2-D (PCA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def score_histogram(scores: np.ndarray, threshold: float, path: Path) -> Path:
    """Reconstruction scores with the anomaly threshold marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=80, color="tab:blue")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g}")
    flagged = float(np.mean(scores > threshold))
    ax.set(
        xlabel="anomaly score (the model's score kind)",
        ylabel="rows",
        title=f"Reconstruction scores ({flagged:.1%} above the threshold)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_side(n_features: int) -> int | None:
    """Side of a square grayscale image with ``n_features`` pixels, if it is one."""
    side = math.isqrt(n_features)
    return side if side * side == n_features and side >= 4 else None


def reconstruction_grid(
    originals: np.ndarray, recons: np.ndarray, labels: np.ndarray | None, path: Path
) -> Path | None:
    """Originals over their reconstructions, one column per class when there are labels."""
    side = image_side(originals.shape[1])
    if side is None:
        return None
    if labels is not None:
        text = labels.astype(str)
        picks = [int(np.flatnonzero(text == v)[0]) for v in np.unique(text)][:12]
    else:
        picks = list(range(min(10, len(originals))))
    plt = _plt()
    fig, axes = plt.subplots(2, len(picks), figsize=(1.2 * len(picks), 2.8), squeeze=False)
    for col, i in enumerate(picks):
        for row, image in enumerate((originals[i], recons[i])):
            ax = axes[row][col]
            ax.imshow(image.reshape(side, side), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if labels is not None:
            axes[0][col].set_title(str(labels[i]), fontsize=9)
    axes[0][0].set_ylabel("original")
    axes[1][0].set_ylabel("reconstruction")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def column_errors(
    names: list[str],
    model_error: np.ndarray,
    baseline_error: np.ndarray,
    path: Path,
    top: int = 30,
) -> Path:
    """For tables (where a grid of "images" means nothing): each source column's mean
    squared reconstruction error on the evaluation rows (one-hot levels summed back to their
    column), beside the trivial reconstruction's (each column's training mean); the ``top``
    worst-reconstructed columns, worst at the top."""
    order = np.argsort(-model_error)[:top][::-1]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(order) + 1.2))
    rows = np.arange(len(order))
    ax.barh(rows + 0.2, baseline_error[order], 0.4, label="column mean (trivial)", color="0.7")
    ax.barh(rows - 0.2, model_error[order], 0.4, label="autoencoder")
    ax.set_yticks(rows, [names[i] for i in order], fontsize=8)
    ax.set_xlabel("mean squared error on the evaluation rows")
    ax.set_title("reconstruction error per source column")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def drift_histogram(check: DriftCheck, title: str, path: Path) -> Path:
    """A drift check's calibrated scores against the reference's (held-out rows at training
    time), as shares of rows per bin of [0, 1]: on data like the training data both are
    flat; drift piles rows up on the right. Written as SVG by hand: a scoring run draws one
    per check, and matplotlib would add about a second to a short run (0.3 s once loaded)."""
    from html import escape

    width, height, left, bottom, top = 600, 360, 60, 50, 40
    plot_w, plot_h = width - left - 20, height - bottom - top
    shares, reference = check.score_histogram, check.reference_histogram
    peak = max([*shares, *reference, 1e-9]) * 1.1
    bins = len(shares)

    def x(i: float) -> float:
        return left + plot_w * i / bins

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    colour = "#ff7f0e" if check.drifted else "#1f77b4"
    bars = "".join(
        f'<rect x="{x(i):.1f}" y="{y(v):.1f}" width="{plot_w / bins - 1:.1f}" '
        f'height="{top + plot_h - y(v):.1f}" fill="{colour}" fill-opacity="0.6"/>'
        for i, v in enumerate(shares)
    )
    steps = " ".join(
        f"{x(i):.1f},{y(v):.1f} {x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(reference)
    )
    ticks = "".join(
        f'<text x="{x(i * bins / 4):.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
        f"{i / 4:g}</text>"
        for i in range(5)
    )
    verdict = "DRIFT" if check.drifted else "no drift"
    heading = (
        f"{title}: {verdict} (score p={check.score_p_value:.2g}, flagged "
        f"{check.flagged_rate:.1%} vs {check.expected_rate:.1%})"
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">'
        f'<rect width="{width}" height="{height}" fill="white"/>'
        f'<text x="{width / 2}" y="20" text-anchor="middle">{escape(heading)}</text>'
        f"{bars}"
        f'<polyline points="{steps}" fill="none" stroke="black" stroke-width="2"/>'
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="black"/>{ticks}'
        f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">'
        "calibrated anomaly score</text>"
        f'<text x="15" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 15 {top + plot_h / 2})">share of rows (max {peak / 1.1:.3f})'
        "</text>"
        f'<rect x="{left + plot_w - 200}" y="{top + 5}" width="12" height="12" '
        f'fill="{colour}" fill-opacity="0.6"/>'
        f'<text x="{left + plot_w - 182}" y="{top + 15}">this run ({check.rows} rows)</text>'
        f'<line x1="{left + plot_w - 200}" y1="{top + 30}" x2="{left + plot_w - 188}" '
        f'y2="{top + 30}" stroke="black" stroke-width="2"/>'
        f'<text x="{left + plot_w - 182}" y="{top + 34}">training reference</text>'
        "</svg>"
    )
    path.write_text(svg)
    return path
