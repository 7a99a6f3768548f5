"""`run`: probe a feature file with a linear classifier and write the JSON, model and PNGs.

The test part is either a stratified, seeded fraction of the file (`research.data.splits.stratified`, the
same split the packer uses, keyed on the file's paths) or a second feature file with the same label names.
Everything that chooses a hyperparameter sees the training part only.
"""
from __future__ import annotations

import datetime
import functools
import time
from pathlib import Path

import numpy as np

from research.data import splits
from research.errors import UserError
from research.probe import lbfgs, logreg, progress, reader, report

METHODS = ("logreg", "lbfgs")


def run(feats, test=None, test_size: float = 0.25, seed: int = 0, method: str = "logreg",
        standardize: bool = False, out=None, overwrite: bool = False, echo=None,
        show_progress: bool = True) -> dict:
    """Fit the probe on every tap of `feats`, score it on the test part, write the outputs; the result dict.

    `echo`, if given (the CLI passes `print`), receives the classification report or the layer-wise table, and
    the time and paths of each fit. `show_progress`: a bar on stderr for every long step.
    """
    _check_args(method, test, test_size, seed)
    data = reader.read(feats)
    outputs = _outputs(Path(feats), out, data.multi_tap, overwrite)
    train_x, train_y, train_ids, test_x, test_y, source = _parts(data, test, test_size, seed)
    if len(np.unique(train_y)) < 2:
        raise UserError(f"the training part of {data.path} holds a single class; a probe needs two or more")
    rows, models, preds = [], {}, {}
    for tap in data.taps:
        bar = functools.partial(_bar, prefix=f"{tap} " if data.multi_tap else "", enabled=show_progress)
        row, models[tap], preds[tap] = _probe_tap(tap, train_x[tap], train_y, test_x[tap], test_y,
                                                  data.label_names, method, standardize, seed, train_ids, bar)
        rows.append(row)
    best = max(rows, key=lambda r: r["accuracy"])  # first of equals: the shallowest
    result = _result(data, rows, best, method, standardize, seed, source, outputs)
    _write(outputs, result, models, preds, best, test_y, data)
    if echo:
        echo(report.table(rows) if data.multi_tap else best["report_text"])
        for row in rows:
            echo(report.timing(row, method, row["tap"] if data.multi_tap else None))
        echo(f"{method}: test accuracy {best['accuracy']:.4f}" + (f" (best tap {best['tap']})" if data.multi_tap
                                                                  else "") + f" -> {outputs['json']}")
    return result


def _bar(total, desc, unit="fit", prefix="", enabled=True):
    return progress.bar(total, prefix + desc, unit, enabled)


def _check_args(method, test, test_size, seed) -> None:
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; known: {', '.join(METHODS)}")
    if int(seed) < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    if test is None and not 0.0 < float(test_size) < 1.0:
        raise UserError(f"--test-size must be in (0, 1), got {test_size}")


def _outputs(feats: Path, out, multi_tap: bool, overwrite: bool) -> dict:
    """The paths to write; UserError if any exists (without overwrite) or the folder does not."""
    json_path = Path(out) if out else feats.with_suffix(".probe.json")
    stem = json_path.name[:-5] if json_path.name.endswith(".json") else json_path.name
    paths = {"json": json_path, "model": json_path.with_name(stem + ".model.joblib"),
             "confusion": json_path.with_name(stem + ".confusion.png")}
    if multi_tap:
        paths["depth"] = json_path.with_name(stem + ".depth.png")
    if not json_path.parent.is_dir():
        raise UserError(f"the output folder {json_path.parent} does not exist")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    return paths


def _parts(data: reader.FeatureSet, test, test_size, seed):
    """(train features per tap, labels, sample ids; test features per tap, labels; record of the test source).

    The sample ids (paths, else row numbers) key the stratified splits, here and in lbfgs's validation carve."""
    ids = data.paths or [f"#{i:09d}" for i in range(len(data))]
    if test is not None:
        other = reader.read(test)
        _check_match(data, other)
        source = {"kind": "file", "path": str(test), "provenance": other.attrs}
        return data.features, data.labels, ids, other.features, other.labels, source
    split = splits.stratified(data.labels, ids, data.label_names, test=test_size, seed=seed)
    if len(split.test) == 0:
        raise UserError(f"--test-size {test_size} leaves no test samples in {data.path}")
    train = {tap: x[split.train] for tap, x in data.features.items()}
    source = {"kind": "held-out fraction", "test_size": float(test_size), "seed": int(seed),
              "split": "research.data.splits.stratified (per class, seeded by seed and class name)"}
    test_x = {tap: x[split.test] for tap, x in data.features.items()}
    return train, data.labels[split.train], [ids[i] for i in split.train], test_x, data.labels[split.test], source


def _check_match(train: reader.FeatureSet, test: reader.FeatureSet) -> None:
    if train.label_names != test.label_names:
        diff = [f"{a!r}!={b!r}" for a, b in zip(train.label_names, test.label_names) if a != b][:3]
        raise UserError(f"label_names differ between {train.path} ({len(train.label_names)}) and {test.path} "
                        f"({len(test.label_names)})" + (f": {', '.join(diff)}" if diff else ""))
    for tap, x in train.features.items():
        if tap not in test.features:
            raise UserError(f"{test.path} has no tap {tap!r}; it has {', '.join(test.taps)}")
        if test.features[tap].shape[1] != x.shape[1]:
            raise UserError(f"tap {tap!r}: {x.shape[1]} features in {train.path}, "
                            f"{test.features[tap].shape[1]} in {test.path}")


def _probe_tap(tap, x, y, test_x, test_y, label_names, method, standardize, seed, ids, bar):
    """Fit one tap and score it on the test part: (row for the JSON, model, test predictions)."""
    start = time.perf_counter()
    if method == "logreg":
        model, record = logreg.fit(x, y, standardize=standardize, seed=seed, progress=bar)
        n_train = len(y)
    else:
        part = splits.stratified(y, ids, label_names, validation=lbfgs.VALIDATION, seed=seed)
        if len(part.validation) == 0:
            raise UserError("too few training samples to carve a validation split for --method lbfgs")
        t, v = part.train, part.validation
        model, record = lbfgs.fit(x[t], y[t], x[v], y[v], standardize=standardize, progress=bar)
        n_train = len(t) + len(v)  # the refit pools train and validation
    fit_time = time.perf_counter() - start
    pred = model.predict(test_x)
    scores, text = report.scores(test_y, pred, label_names)
    row = {"tap": tap, "dim": int(x.shape[1]), "accuracy": float(np.mean(pred == test_y)),
           "macro_f1": float(scores["macro avg"]["f1-score"]), **record, "n_train": int(n_train),
           "n_test": int(len(test_y)), "fit_time_s": fit_time, "classification_report": scores,
           "per_class": {name: scores[name] for name in label_names if name in scores},
           "macro avg": scores["macro avg"], "report_text": text}
    return row, model, pred


def _result(data, rows, best, method, standardize, seed, source, outputs) -> dict:
    """The JSON: the best tap's scores at the top level (the only tap for single-tap files)."""
    import sklearn

    top = {k: v for k, v in best.items() if k not in ("report_text",)}
    result = {"method": method, **top, "standardize": bool(standardize), "seed": int(seed),
              "features": str(data.path), "test_source": source, "provenance": data.attrs,
              "label_names": data.label_names, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "versions": {"scikit-learn": sklearn.__version__, **_jax_versions(method)},
              "files": {k: str(p) for k, p in outputs.items()}}
    result["fit_time_s"] = float(sum(r["fit_time_s"] for r in rows))
    if data.multi_tap:
        result["best_tap"] = best["tap"]
        result["taps"] = [{k: v for k, v in r.items() if k != "report_text"} for r in rows]
    return result


def _jax_versions(method) -> dict:
    if method != "lbfgs":
        return {}
    import jax
    import optax
    return {"jax": jax.__version__, "optax": optax.__version__, "backend": jax.default_backend()}


def _write(outputs, result, models, preds, best, test_y, data) -> None:
    """Model and PNGs first, the JSON last: a JSON on disk means the whole probe finished."""
    report.write_model(outputs["model"], models if data.multi_tap else models[best["tap"]])
    title = f"{result['method']}: {best['accuracy']:.3f}" + (f" ({best['tap']})" if data.multi_tap else "")
    report.confusion_png(outputs["confusion"], test_y, preds[best["tap"]], data.label_names, title)
    if data.multi_tap:
        report.depth_png(outputs["depth"], data.taps, [r["accuracy"] for r in result["taps"]],
                         f"{result['method']} probe accuracy by depth")
    report.write_json(outputs["json"], result)
