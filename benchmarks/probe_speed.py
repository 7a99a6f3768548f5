"""Fit time of the two probes on a synthetic N x D Gaussian mixture: scikit-learn (`--method logreg`: 17 C
values x 5 folds, then a refit) against JAX L-BFGS (`--method lbfgs`: the 45-strength sweep on a validation
split, then a refit). The lbfgs time is given cold (compiling included) and warm (compiled already).

    python benchmarks/probe_speed.py            # 50000 x 2048, 100 classes: minutes to hours on a CPU
    python benchmarks/probe_speed.py --quick    # 5000 x 256, 10 classes

Writes benchmarks/results/probe_speed.json (or --out).
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
from research.probe import lbfgs, logreg

RESULTS = Path(__file__).resolve().parent / "results" / "probe_speed.json"


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
            "cpus": os.cpu_count(), "python": platform.python_version(), "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()],
            "versions": {"jax": jax.__version__, "optax": optax.__version__, "scikit-learn": sklearn.__version__,
                         "numpy": np.__version__}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5000 x 256, 10 classes")
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    for name, r in runs.items():
        print(f"{name:<11} {r['fit_s']:8.2f} s  accuracy {r['accuracy']:.4f}  ({r['fits']} fits)")
    print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
