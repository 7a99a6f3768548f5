"""Fit time of the two probes on a synthetic N x D Gaussian mixture: scikit-learn (`--method logreg`: 17 C
values x 5 folds, then a refit) against JAX L-BFGS (`--method lbfgs`: the 45-strength sweep on a validation
split, then a refit). The lbfgs time is given cold (compiling included) and warm (compiled already).

    python benchmarks/probe_speed.py            # 50000 x 2048, 100 classes: minutes to hours on a CPU
    python benchmarks/probe_speed.py --quick    # 5000 x 256, 10 classes

Writes benchmarks/results/probe_speed.json (or --out).

The seed-002 case (issue 17): wide features, 1,020 training rows x 25,088 (VGG16 block5_pool flatten), 17
classes, the probe's own 75/25 split, grid and folds; target <= 2 minutes on 2 cores with the old path's C and
test accuracy (+-0.5 pt). `--old` also times the old path (GridSearchCV of direct, cold fits, as the probe ran
before the row-space fits: ~21 minutes at this size on 2 cores) and JAX L-BFGS on all D columns.

    python benchmarks/probe_speed.py --seed002 [--feats FEATURES.h5] [--old]   # synthetic unless --feats
    python benchmarks/probe_speed.py --seed002 --n 680 --d 8192 --old          # old against new, smaller
    python benchmarks/probe_speed.py --seed002 --feats F.h5 --columns 2048 --old   # the same, real rows

Writes benchmarks/results/probe_speed_seed002.json (or --out), with the load average beside the times.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from research.data import splits
from research.probe import lbfgs, logreg, progress

RESULTS = Path(__file__).resolve().parent / "results" / "probe_speed.json"
SEED002 = RESULTS.with_name("probe_speed_seed002.json")
SEED002_SHAPE = (1360, 25088, 17)  # Flowers-17 (17 x 80 photos), VGG16 block5_pool flatten; 1,020 train at 75/25


def problem(n: int, d: int, k: int, seed: int):
    """Overlapping Gaussian classes, separable enough for the probes to reach roughly 90%."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * (3.0 / np.sqrt(d))
    y = np.arange(n) % k
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def machine() -> dict:
    import jax
    import optax
    import sklearn
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(), "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()],
            "versions": {"jax": jax.__version__, "optax": optax.__version__, "scikit-learn": sklearn.__version__,
                         "numpy": np.__version__}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5000 x 256, 10 classes")
    parser.add_argument("--seed002", action="store_true", help="the seed-002 case: 1360 x 25088, 17 classes")
    parser.add_argument("--feats", type=Path, help="--seed002 on this feature file instead of synthetic data")
    parser.add_argument("--old", action="store_true", help="--seed002: time the old paths too")
    parser.add_argument("--columns", type=int, default=None, help="--feats: keep only the first N columns")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.seed002:
        return seed002(args)
    args.out = args.out or RESULTS
    args.n, args.d, args.classes = args.n or 50000, args.d or 2048, args.classes or 100
    n, d, k = (5000, 256, 10) if args.quick else (args.n, args.d, args.classes)

    x, y = problem(n, d, k, args.seed)
    ids = [f"#{i:09d}" for i in range(n)]
    names = [f"c{i}" for i in range(k)]
    part = splits.stratified(y, ids, names, test=0.2, seed=args.seed)
    x_train, y_train, x_test, y_test = x[part.train], y[part.train], x[part.test], y[part.test]
    inner = splits.stratified(y_train, [ids[i] for i in part.train], names, validation=lbfgs.VALIDATION,
                              seed=args.seed)
    t, v = inner.train, inner.validation

    runs = {}
    (model, record), seconds = timed(lambda: logreg.fit(x_train, y_train, seed=args.seed))
    runs["logreg"] = {"fit_s": seconds, "accuracy": float(np.mean(model.predict(x_test) == y_test)),
                      "best_C": record["best_C"], "fits": len(record["C_grid"]) * record["folds"] + 1}
    for label in ("lbfgs_cold", "lbfgs_warm"):
        (model, record), seconds = timed(lambda: lbfgs.fit(x_train[t], y_train[t], x_train[v], y_train[v]))
        runs[label] = {"fit_s": seconds, "accuracy": float(np.mean(model.predict(x_test) == y_test)),
                       "best_l2": record["best_l2"], "best_C": record["best_C"], "fits": len(lbfgs.L2_GRID) + 1,
                       "iterations": sum(s["iterations"] for s in record["sweep"]) + record["refit_iterations"]}
    result = {"benchmark": "probe_speed", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "problem": {"n": n, "d": d, "classes": k, "n_train": len(y_train), "n_test": len(y_test),
                          "seed": args.seed, "quick": args.quick},
              "machine": machine(), "runs": runs,
              "speedup_warm": runs["logreg"]["fit_s"] / runs["lbfgs_warm"]["fit_s"]}
    return save(result, args.out)


def save(result: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    for name, r in result["runs"].items():
        print(f"{name:<11} {r['fit_s']:8.2f} s  accuracy {r['accuracy']:.4f}  C {r['best_C']:.4g}  "
              f"({r['fits']} fits)")
    print(f"-> {out}")
    return result


def old_logreg(x, y, seed: int):
    """The scikit-learn probe as it was before issue 17: GridSearchCV over a Pipeline, cold fits on all D."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from threadpoolctl import threadpool_limits

    search = GridSearchCV(LogisticRegression(solver="lbfgs", max_iter=logreg.MAX_ITER), {"C": list(logreg.C_GRID)},
                          scoring="accuracy", cv=StratifiedKFold(logreg.FOLDS, shuffle=True, random_state=seed))
    with threadpool_limits(1 if x.size < logreg.SMALL else None):
        search.fit(x, y)
    return search.best_estimator_, {"best_C": float(search.best_params_["C"]),
                                    "cv_accuracy": [float(a) for a in search.cv_results_["mean_test_score"]]}


def seed002_data(args):
    """(x, y, names, ids, source): the feature file's rows, or a synthetic problem of the seed-002 shape."""
    if args.feats:
        from research.probe import reader
        data = reader.read(args.feats)
        x = next(iter(data.features.values()))[:, :args.columns]
        ids = data.paths or [f"#{i:09d}" for i in range(len(data))]
        return x, data.labels, data.label_names, ids, {"feats": str(args.feats), "columns": args.columns,
                                                      "provenance": data.attrs}
    n, d, k = (args.n or SEED002_SHAPE[0], args.d or SEED002_SHAPE[1], args.classes or SEED002_SHAPE[2])
    x, y = problem(n, d, k, args.seed)
    return x, y, [f"c{i}" for i in range(k)], [f"#{i:09d}" for i in range(n)], {"synthetic": "problem()"}


def seed002(args) -> dict:
    """Old (with --old) against new on the seed-002 shape or a feature file, as `research probe` splits it."""
    x, y, names, ids, source = seed002_data(args)
    part = splits.stratified(y, ids, names, test=0.25, seed=args.seed)
    x_train, y_train, x_test, y_test = x[part.train], y[part.train], x[part.test], y[part.test]
    inner = splits.stratified(y_train, [ids[i] for i in part.train], names, validation=lbfgs.VALIDATION,
                              seed=args.seed)
    t, v = inner.train, inner.validation
    load = [os.getloadavg()]

    def run(label, fit):
        (model, record), seconds = timed(fit)
        load.append(os.getloadavg())
        runs[label] = {"fit_s": seconds, "accuracy": float(np.mean(model.predict(x_test) == y_test)),
                       "best_C": record["best_C"], "fits": record.get("fits"), "paths": record.get("paths"),
                       "load_average_after": load[-1]}
        print(f"{label}: {seconds:.1f} s, accuracy {runs[label]['accuracy']:.4f}, C {record['best_C']:.4g}",
              flush=True)
        return record

    runs = {}
    new = run("logreg", lambda: logreg.fit(x_train, y_train, seed=args.seed, progress=progress.bar))
    runs["logreg"]["cv_accuracy"] = new["cv_accuracy"]
    run("lbfgs", lambda: lbfgs.fit(x_train[t], y_train[t], x_train[v], y_train[v], progress=progress.bar))
    if args.old:
        old = run("logreg_old", lambda: old_logreg(x_train, y_train, args.seed))
        runs["logreg_old"]["cv_accuracy"] = old["cv_accuracy"]
        run("lbfgs_all_columns", lambda: lbfgs.fit(x_train[t], y_train[t], x_train[v], y_train[v], reduce=False))
    result = {"benchmark": "probe_speed_seed002", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "problem": {"n": len(y), "d": int(x.shape[1]), "classes": len(names), "n_train": len(y_train),
                          "n_test": len(y_test), "seed": args.seed, "grid": "logreg.C_GRID (17 C, 1e-4..1e4)",
                          "folds": logreg.FOLDS, **source},
              "machine": machine(), "load_average_before": load[0], "runs": runs,
              "target": {"logreg_fit_s_max": 120.0, "accuracy_pt_max": 0.5}}
    if args.old:
        result["old_vs_new"] = {"same_C": runs["logreg"]["best_C"] == runs["logreg_old"]["best_C"],
                                "accuracy_pt": 100 * (runs["logreg"]["accuracy"] - runs["logreg_old"]["accuracy"]),
                                "speedup": runs["logreg_old"]["fit_s"] / runs["logreg"]["fit_s"]}
    return save(result, args.out or SEED002)


if __name__ == "__main__":
    main()
