"""What a run leaves besides checkpoints: TensorBoard scalars, PNG curves, the test report and summary.json.

TensorBoard files come from tensorboardX (pinned; no TensorFlow needed). Only process 0 writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from research import io

SUMMARY = "summary.json"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"


class Writer:
    """TensorBoard scalars; a no-op off process 0."""

    def __init__(self, workdir, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(str(Path(workdir) / TENSORBOARD))

    def scalars(self, step: int, values: dict, prefix: str) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}/{name}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def curves(history: list[dict], out) -> None:
    """Train and validation accuracy and loss per epoch, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for split in ("train", "validation"):
            values = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def classification_report(labels, predictions, class_names) -> tuple[str, dict]:
    """sklearn's text and dict reports over every class, present in the test split or not."""
    from sklearn.metrics import classification_report as report

    ids = list(range(len(class_names)))
    kwargs = dict(labels=ids, target_names=list(class_names), zero_division=0)
    return report(labels, predictions, **kwargs), report(labels, predictions, output_dict=True, **kwargs)


# Every file a run writes goes through the one I/O layer: a temporary name, fsync, rename.
write_json = io.write_json
atomic_write = io.atomic_write
