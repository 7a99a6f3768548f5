"""Test-set scores for every probe: accuracy, mean per-class accuracy and PASCAL VOC 2007's 11-point mAP.

Kornblith et al. (2019) report mean per-class accuracy for FGVC Aircraft, Oxford-IIIT Pets, Caltech-101 and
Oxford 102 Flowers, 11-point mAP for VOC 2007 and top-1 accuracy for the rest.
Every probe JSON carries the fields below and names its primary one in `metric`.

Multi-label targets are an (N, C) integer matrix: 1 present, 0 absent, -1 ignored. -1 is VOC's "difficult"
(the VOC files write 1 / -1 / 0 for present / absent / difficult); ignored entries count neither way, as in the
VOC 2007 devkit's classification evaluation.
"""
from __future__ import annotations

import numpy as np

from research.errors import UserError
from research.probe import report

SINGLE_LABEL = ("accuracy", "mean_per_class_accuracy")
MULTI_LABEL = ("voc07_map", "accuracy")
METRICS = ("accuracy", "mean_per_class_accuracy", "voc07_map")
IGNORE = -1
THRESHOLDS = np.arange(0.0, 1.1, 0.1)  # recall levels 0, 0.1, ..., 1 (the devkit's 0:0.1:1)


def accuracy(y, pred) -> float:
    """Top-1 accuracy; for (N, C) targets, the fraction of rows whose every non-ignored label is right."""
    y, pred = np.asarray(y), np.asarray(pred)
    if y.ndim == 1:
        return float(np.mean(y == pred))
    right = (y == IGNORE) | ((y > 0) == (pred > 0))
    return float(np.mean(right.all(axis=1)))


def mean_per_class_accuracy(y, pred) -> float:
    """Each class's recall, averaged over the classes present in y: scikit-learn's balanced_accuracy_score
    (which also leaves out classes with no true samples)."""
    y, pred = np.asarray(y), np.asarray(pred)
    totals = np.bincount(y)
    hits = np.bincount(y[pred == y], minlength=len(totals))
    present = totals > 0
    return float(np.mean(hits[present] / totals[present]))


def voc07_ap(scores, targets) -> float:
    """One class's 11-point interpolated average precision (VOC 2007): rows ranked by descending score (equal
    scores keep their row order, as MATLAB's stable sort does), ignored rows dropped; at each recall level t
    the best precision reached at recall >= t (0 if none), averaged over the 11 levels. NaN without positives."""
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets)
    keep = targets != IGNORE
    positive = targets[keep] > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    ranked = positive[np.argsort(-scores[keep], kind="stable")]
    tp = np.cumsum(ranked)
    recall = tp / n_pos
    precision = tp / np.arange(1, len(ranked) + 1)
    # the best precision at recall >= t: a running maximum from the end, read at the first index reaching t
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(recall, THRESHOLDS, side="left")  # recall is non-decreasing
    return float(np.mean(np.where(first < len(recall), best_after[np.minimum(first, len(recall) - 1)], 0.0)))


def voc07_map(scores, targets) -> tuple[float, np.ndarray]:
    """(mean AP over the classes with a positive test row, the (C,) per-class APs, NaN where none)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    aps = np.array([voc07_ap(scores[:, c], targets[:, c]) for c in range(targets.shape[1])])
    valid = ~np.isnan(aps)
    return (float(aps[valid].mean()) if valid.any() else float("nan")), aps


def single_label(y, pred, label_names) -> dict:
    """The scores and per-class report of single-label predictions (scikit-learn's classification_report)."""
    table, text = report.scores(y, pred, label_names)
    return {"accuracy": accuracy(y, pred), "mean_per_class_accuracy": mean_per_class_accuracy(y, pred),
            "macro_f1": float(table["macro avg"]["f1-score"]), "classification_report": table,
            "per_class": {name: table[name] for name in label_names if name in table},
            "macro avg": table["macro avg"], "report_text": text}


def multi_label(targets, scores, pred, label_names) -> dict:
    """The scores of multi-label predictions: per class, AP and precision/recall/F1 of `pred` over its
    non-ignored rows; mean per-class accuracy is a single-label notion and is None here."""
    from sklearn.metrics import precision_recall_fscore_support

    targets, pred = np.asarray(targets), np.asarray(pred)
    mean_ap, aps = voc07_map(scores, targets)
    per_class = {}
    for c, name in enumerate(label_names):
        keep = targets[:, c] != IGNORE
        p, r, f, _ = precision_recall_fscore_support(targets[keep, c] > 0, pred[keep, c] > 0, average="binary",
                                                     zero_division=0)
        per_class[name] = {"ap": None if np.isnan(aps[c]) else float(aps[c]), "precision": float(p),
                           "recall": float(r), "f1-score": float(f), "support": int((targets[keep, c] > 0).sum())}
    macro = {k: float(np.mean([v[k] for v in per_class.values()])) for k in ("precision", "recall", "f1-score")}
    macro["support"] = int(sum(v["support"] for v in per_class.values()))
    lines = [f"{'class':>24} {'AP':>7} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    lines += [f"{n:>24} {_num(v['ap']):>7} {v['precision']:>9.4f} {v['recall']:>7.4f} {v['f1-score']:>7.4f} "
              f"{v['support']:>8}" for n, v in per_class.items()]
    lines.append(f"{'mAP (VOC07 11-point)':>24} {_num(mean_ap):>7}")
    return {"voc07_map": mean_ap, "accuracy": accuracy(targets, pred), "mean_per_class_accuracy": None,
            "macro_f1": macro["f1-score"], "classification_report": {**per_class, "macro avg": macro},
            "per_class": per_class, "macro avg": macro, "report_text": "\n".join(lines)}


def _num(value) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.4f}"


def primary(metric, multilabel: bool) -> str:
    """The metric a probe ranks taps by and reports first: VOC mAP for multi-label files, else accuracy unless
    asked; UserError for one the file cannot give."""
    allowed = MULTI_LABEL if multilabel else SINGLE_LABEL
    metric = metric or allowed[0]
    if metric not in allowed:
        kind = "multi-label" if multilabel else "single-label"
        raise UserError(f"--metric {metric!r} does not apply to a {kind} file; choose one of {', '.join(allowed)}")
    return metric
