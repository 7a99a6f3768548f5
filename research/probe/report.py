"""What a probe leaves behind: scores from scikit-learn's `classification_report`, the JSON, the fitted model
and PNGs (a confusion matrix; accuracy against depth for multi-tap files), each written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from research import io


def scores(y_true, y_pred, label_names) -> tuple[dict, str]:
    """(classification_report as a dict, as text) over every class the file names."""
    from sklearn.metrics import classification_report

    kw = dict(labels=np.arange(len(label_names)), target_names=list(label_names), zero_division=0)
    return (classification_report(y_true, y_pred, output_dict=True, **kw),
            classification_report(y_true, y_pred, digits=4, **kw))


def atomic(path: Path, write) -> Path:
    """Call write(temporary path) next to `path`, then rename it into place, so `path` is never partial."""
    return io.atomic_write(path, write)


def write_json(path: Path, result: dict) -> Path:
    return io.write_json(path, result, indent=2, sort_keys=False)


def write_model(path: Path, model) -> Path:
    import joblib
    return atomic(path, lambda tmp: joblib.dump(model, tmp))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def confusion_png(path: Path, y_true, y_pred, label_names, title: str) -> Path:
    """Row-normalised confusion matrix, counts in the cells where the classes are few enough to read."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    k = len(label_names)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(k))
    rate = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * k + 2), 40.0)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rate[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _save(fig, plt, path)


def depth_png(path: Path, taps, accuracy, title: str, ylabel: str = "test accuracy") -> Path:
    """Test accuracy (or another score) per tap, taps in depth order along x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(taps) + 2), 4))
    ax.plot(range(len(taps)), accuracy, marker="o")
    ax.set_xticks(range(len(taps)), taps, rotation=45, ha="right")
    ax.set_xlabel("tap (shallow to deep)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    def write(tmp):
        fig.savefig(tmp, format="png", dpi=100)
    try:
        return atomic(path, write)
    finally:
        plt.close(fig)


def table(rows: list[dict], metric: str = "accuracy") -> str:
    """The layer-wise table: one line per tap; `setting` is the chosen C, kNN's k or the few-shot count."""
    head = metric if metric == "accuracy" else {"mean_per_class_accuracy": "mean/class", "voc07_map": "mAP"}[metric]
    lines = [f"{'tap':<24} {'dim':>6} {head:>10} {'macro f1':>9} {'setting':>10} {'fit s':>7}"]
    for r in rows:
        lines.append(f"{r['tap']:<24} {r['dim']:>6} {r[metric]:>10.4f} {r['macro_f1']:>9.4f} "
                     f"{_setting(r):>10} {r['fit_time_s']:>7.2f}")
    return "\n".join(lines)


def _setting(row: dict) -> str:
    if "best_C" in row:
        return f"C={row['best_C']:.3g}"
    return f"k={row['k']}" if "k" in row else f"{row['primary_shots']}-shot"


def timing(row: dict, method: str, tap: str | None = None) -> str:
    """One line: how long the fit took and which speed-ups ran (`paths` in the JSON)."""
    p = row["paths"]
    ways = [f"row space {p['dim']} -> {max(p['rank'])} dims" if p["row_space"] else f"all {p['dim']} dims"]
    if p.get("warm_start"):
        ways.append("warm starts")
    if p.get("processes", 1) > 1:
        ways.append(f"{p['processes']} processes")
    if p.get("lambda_batch"):
        ways.append(f"{p['lambda_batch']} strengths per vmapped call on {p['backend']}")
    return (f"{tap + ': ' if tap else ''}{method}: {row['fits']} fits in "
            f"{row['fit_time_s']:.1f} s (search {row['cv_time_s']:.1f} s, refit {row['refit_time_s']:.1f} s); "
            + ", ".join(ways))
