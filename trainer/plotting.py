"""The loss-curve PNG of a run (train and validation loss against optimizer step)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def plot_loss_curve(rows: Iterable[dict], path: str | Path, title: str = "") -> Path:
    """Draw metrics.jsonl rows (``loss`` and ``val_loss`` by ``step``) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    rows = list(rows)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy, nats)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
