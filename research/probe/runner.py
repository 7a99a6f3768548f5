"""`run`: probe a feature file (a linear classifier, kNN or few-shot ridge) and write the JSON, model and PNGs.

The test part is either a stratified, seeded fraction of the file (`research.data.splits.stratified`, the
same split the packer uses, keyed on the file's paths) or a second feature file with the same label names.
Everything that chooses a hyperparameter sees the training part only. Multi-label files (see `reader`) are
split by a seeded shuffle of all rows and probed one-vs-rest; their primary metric is VOC 2007 mAP.
"""
from __future__ import annotations

import datetime
import functools
import time
from pathlib import Path

import numpy as np

from research.data import splits
from research.errors import UserError
from research.probe import fewshot, knn, lbfgs, logreg, metrics, multilabel, progress, reader, report

METHODS = ("logreg", "lbfgs", "knn", "fewshot")
ROW_NORMALISED = ("knn", "fewshot")  # these L2-normalise rows themselves
GIVEN_VALIDATION = "validation:"  # the sample-id prefix of a `validation` file's rows


def run(feats, test=None, test_size: float = 0.25, seed: int = 0, method: str = "logreg",
        standardize: bool = False, out=None, overwrite: bool = False, echo=None, metric=None,
        options=None, validation=None, show_progress: bool = True) -> dict:
    """Fit the probe on every tap of `feats`, score it on the test part, write the outputs; the result dict.

    `metric` ranks the taps and is named in the JSON (`metrics.primary`); `options` holds the kNN and few-shot
    settings (k, temperature; shots, seeds) and lbfgs's max_iter (per strength). `validation`, a feature file
    beside a `test` file, is a given validation split: lbfgs chooses its strength on it and refits on train +
    validation (Kornblith et al. 2019); the other methods fit on both. `echo`, if given (the CLI passes
    `print`), receives the classification report or the layer-wise table, and the time and paths of each
    fit. `show_progress`: a bar on stderr for every long step.
    """
    _check_args(method, test, test_size, seed)
    if validation is not None and test is None:
        raise UserError("a validation file needs a test file too (--test)")
    if standardize and method in ROW_NORMALISED:
        raise UserError(f"--standardize applies to logreg and lbfgs; {method} L2-normalises rows itself")
    data = reader.read(feats)
    metric = metrics.primary(metric, data.multilabel)
    if data.multilabel and method == "fewshot":
        raise UserError(f"{data.path} is multi-label; the few-shot probe draws n rows per class of single labels")
    skip = (("confusion",) if data.multilabel else ()) + (("model",) if method == "knn" else ())
    outputs = _outputs(Path(feats), out, data.multi_tap, overwrite, skip)
    train_x, train_y, train_ids, test_x, test_y, source = _parts(data, test, test_size, seed)
    if validation is not None:
        train_x, train_y, train_ids, source["validation"] = _with_validation(data, validation, train_x, train_y,
                                                                             train_ids)
    if not data.multilabel and len(np.unique(train_y)) < 2:
        raise UserError(f"the training part of {data.path} holds a single class; a probe needs two or more")
    rows, models, preds = [], {}, {}
    for tap in data.taps:
        bar = functools.partial(_bar, prefix=f"{tap} " if data.multi_tap else "", enabled=show_progress)
        row, models[tap], preds[tap] = _probe_tap(tap, train_x[tap], train_y, test_x[tap], test_y,
                                                  data.label_names, method, standardize, seed, train_ids,
                                                  options or {}, bar)
        rows.append(row)
    best = max(rows, key=lambda r: r[metric])  # first of equals: the shallowest
    result = _result(data, rows, best, method, standardize, seed, source, outputs)
    result = {"metric": metric, "metric_value": best[metric], **result}
    _write(outputs, result, models, preds, best, test_y, data)
    if echo:
        echo(report.table(rows, metric) if data.multi_tap else best["report_text"])
        echo(f"{method}: test {metric} {best[metric]:.4f}" + (f" (best tap {best['tap']})" if data.multi_tap
                                                             else "") + f" -> {outputs['json']}")
        for row in rows:
            if "paths" in row:
                echo(report.timing(row, method, row["tap"] if data.multi_tap else None))
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


def _outputs(feats: Path, out, multi_tap: bool, overwrite: bool, skip=()) -> dict:
    """The paths to write, less those in `skip`; UserError if any exists (without overwrite) or the folder does
    not."""
    json_path = Path(out) if out else feats.with_suffix(".probe.json")
    stem = json_path.name[:-5] if json_path.name.endswith(".json") else json_path.name
    paths = {"json": json_path, "model": json_path.with_name(stem + ".model.joblib"),
             "confusion": json_path.with_name(stem + ".confusion.png")}
    if multi_tap:
        paths["depth"] = json_path.with_name(stem + ".depth.png")
    paths = {k: p for k, p in paths.items() if k not in skip}
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
    if data.multilabel:  # one stratum: a seeded shuffle of all rows
        split = splits.stratified(np.zeros(len(data), int), ids, ["all rows"], test=test_size, seed=seed)
    else:
        split = splits.stratified(data.labels, ids, data.label_names, test=test_size, seed=seed)
    if len(split.test) == 0:
        raise UserError(f"--test-size {test_size} leaves no test samples in {data.path}")
    train = {tap: x[split.train] for tap, x in data.features.items()}
    source = {"kind": "held-out fraction", "test_size": float(test_size), "seed": int(seed),
              "split": "research.data.splits.stratified (per class, seeded by seed and class name)"}
    test_x = {tap: x[split.test] for tap, x in data.features.items()}
    return train, data.labels[split.train], [ids[i] for i in split.train], test_x, data.labels[split.test], source


def _with_validation(data: reader.FeatureSet, validation, train_x, train_y, train_ids):
    """The training part with a given validation file's rows appended, their ids marked as such."""
    other = reader.read(validation)
    _check_match(data, other)
    ids = other.paths or [f"#{i:09d}" for i in range(len(other))]
    x = {tap: np.concatenate([v, other.features[tap]]) for tap, v in train_x.items()}
    record = {"path": str(validation), "n": len(other), "provenance": other.attrs}
    return (x, np.concatenate([train_y, other.labels]), list(train_ids) + [GIVEN_VALIDATION + i for i in ids],
            record)


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


def _probe_tap(tap, x, y, test_x, test_y, label_names, method, standardize, seed, ids, options, bar):
    """Fit one tap and score it on the test part: (row for the JSON, model, test predictions).

    `fit_time_s` is the fit (for knn and fewshot, which fit and predict in one pass, both); `time_s` all of it."""
    start = time.perf_counter()
    if method in ROW_NORMALISED:
        model, pred, margins, record, n_train = _suite(method, x, y, test_x, test_y, label_names, options)
        fit_time = time.perf_counter() - start
    else:
        if y.ndim == 2:
            model, record = multilabel.fit(x, y, label_names, lambda xc, yc, keep: _fit(
                method, xc, yc, [ids[i] for i in np.flatnonzero(keep)], ["absent", "present"], standardize, seed,
                bar, options)[:2])
            n_train = len(y)
        else:
            model, record, n_train = _fit(method, x, y, ids, label_names, standardize, seed, bar, options)
        fit_time = time.perf_counter() - start
        pred = model.predict(test_x)
        margins = model.decision_function(test_x) if y.ndim == 2 else None
    scored = (metrics.multi_label(test_y, margins, pred, label_names) if y.ndim == 2 else
              metrics.single_label(test_y, pred, label_names))
    row = {"tap": tap, "dim": int(x.shape[1]), **scored, **record, "n_train": int(n_train),
           "n_test": int(len(test_y)), "fit_time_s": fit_time, "time_s": time.perf_counter() - start}
    return row, model, pred


def _fit(method, x, y, ids, label_names, standardize, seed, bar, options=None):
    """One logreg or lbfgs fit: (model, record, rows fitted on)."""
    if method == "logreg":
        model, record = logreg.fit(x, y, standardize=standardize, seed=seed, progress=bar)
        return model, record, len(y)
    given = np.array([i.startswith(GIVEN_VALIDATION) for i in ids], bool)
    if given.any():
        t, v = np.flatnonzero(~given), np.flatnonzero(given)
    else:
        part = splits.stratified(y, ids, label_names, validation=lbfgs.VALIDATION, seed=seed)
        t, v = part.train, part.validation
    if len(v) == 0 or len(t) == 0:
        raise UserError("too few training samples to carve a validation split for --method lbfgs")
    model, record = lbfgs.fit(x[t], y[t], x[v], y[v], standardize=standardize, progress=bar,
                              **_pick(options or {}, "max_iter"))
    return model, record, len(t) + len(v)  # the refit pools train and validation


def _suite(method, x, y, test_x, test_y, label_names, options):
    """kNN or few-shot: (model or None, test predictions, multi-label scores or None, record, n_train)."""
    classes = len(label_names)
    if method == "fewshot":
        model, pred, record = fewshot.run(x, y, test_x, test_y, classes, **_pick(options, "shots", "seeds"))
        return model, pred, None, record, record["n_train"]
    weighted, votes, record = knn.fit_predict(x, y, test_x, classes, **_pick(options, "k", "temperature"))
    if y.ndim == 2:
        majority = metrics.multi_label(test_y, votes, votes > 0.5, label_names)
        pred, margins = (weighted > 0.5).astype(np.int8), weighted
    else:
        majority, pred, margins = metrics.single_label(test_y, votes, label_names), weighted, None
    record["majority"] = {k: majority[k] for k in ("accuracy", "mean_per_class_accuracy", "voc07_map", "macro_f1")
                          if k in majority}
    return None, pred, margins, record, len(y)


def _pick(options: dict, *keys) -> dict:
    return {k: options[k] for k in keys if options.get(k) is not None}


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
    if method == "logreg":
        return {}
    import jax
    import optax
    return {"jax": jax.__version__, "optax": optax.__version__, "backend": jax.default_backend()}


def _write(outputs, result, models, preds, best, test_y, data) -> None:
    """Model and PNGs first, the JSON last: a JSON on disk means the whole probe finished."""
    metric = result["metric"]
    if "model" in outputs:
        report.write_model(outputs["model"], models if data.multi_tap else models[best["tap"]])
    title = f"{result['method']}: {best['accuracy']:.3f}" + (f" ({best['tap']})" if data.multi_tap else "")
    if "confusion" in outputs:
        report.confusion_png(outputs["confusion"], test_y, preds[best["tap"]], data.label_names, title)
    if data.multi_tap:
        report.depth_png(outputs["depth"], data.taps, [r[metric] for r in result["taps"]],
                         f"{result['method']} probe {metric.replace('_', ' ')} by depth", ylabel=f"test {metric}")
    report.write_json(outputs["json"], result)
