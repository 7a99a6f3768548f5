"""Time of the kNN and few-shot probes (`research probe --method knn|fewshot`) on a synthetic clustered problem:
N training rows x D features in C Gaussian clusters (one per class; the noise set so that the problem is about as
hard at every width, see `problem`), M test rows. Synthetic: the accuracies describe these clusters only.

    python -m benchmarks.probe_suite            # 100,000 x 2048 train, 10,000 test, 1000 classes
    python -m benchmarks.probe_suite --quick    # 10,000 x 256 train, 2,000 test, 100 classes

kNN (k=20, T=0.07) runs twice, cold (compiling included) and warm; few-shot runs 1, 5, 10 and 25 shots per
class x 5 seeds (20 ridge fits, each scored on the M test rows), cold. Writes benchmarks/results/probe_suite.json
and .md (or --out).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from . import run
from research.probe import fewshot, knn, metrics

FULL = {"n": 100_000, "d": 2048, "classes": 1000, "test": 10_000}
QUICK = {"n": 10_000, "d": 256, "classes": 100, "test": 2_000}


def problem(n: int, d: int, classes: int, test: int, seed: int):
    """(train x, train y, test x, test y): float32 rows = a class mean (standard normal) plus Gaussian noise of
    standard deviation 3 (d / 256)^(1/4), so that the squared-distance margin over its noise, which grows as
    sqrt(d) / sd^2, is the same at every width (kNN about 0.9 at 256 features, 100 classes); classes balanced."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal(size=(classes, d), dtype=np.float32)
    noise = np.float32(3.0 * (d / 256) ** 0.25)

    def draw(count):
        y = rng.permutation(np.arange(count) % classes)
        x = rng.standard_normal(size=(count, d), dtype=np.float32)
        x *= noise
        x += means[y]
        return x, y

    return (*draw(n), *draw(test))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def knn_case(train_x, train_y, test_x, test_y, classes: int) -> dict:
    out = {}
    for label in ("cold", "warm"):
        pred, seconds = timed(lambda: knn.predict(train_x, train_y, test_x, classes))
        out[label] = {"seconds": round(seconds, 2), "test_rows_per_s": round(len(test_x) / seconds, 1)}
    out["accuracy_weighted"] = metrics.accuracy(test_y, pred["weighted"])
    out["accuracy_majority"] = metrics.accuracy(test_y, pred["majority"])
    out["similarity_flops"] = 2.0 * len(test_x) * len(train_x) * train_x.shape[1]
    out["similarity_gflop_per_s_warm"] = round(out["similarity_flops"] / out["warm"]["seconds"] / 1e9, 1)
    return out


def fewshot_case(train_x, train_y, test_x, test_y, classes: int) -> dict:
    (_, _, record), seconds = timed(lambda: fewshot.run(train_x, train_y, test_x, test_y, classes))
    return {"seconds": round(seconds, 2), "fits": len(record["shots"]) * record["seeds"], "seeds": record["seeds"],
            "l2": record["l2"], "accuracy": {n: {"mean": s["accuracy"], "std": s["accuracy_std"]}
                                             for n, s in record["shots"].items()}}


def markdown(result: dict) -> str:
    p, k, f = result["problem"], result["knn"], result["fewshot"]
    lines = [f"# probe suite: {p['n']:,} x {p['d']} train, {p['test']:,} test, {p['classes']} classes "
             f"(synthetic clusters), {result['machine']['backend']}", "",
             "| probe | seconds | notes |", "|---|---|---|",
             f"| kNN k=20 cold (compile included) | {k['cold']['seconds']} | |",
             f"| kNN k=20 warm | {k['warm']['seconds']} | {k['warm']['test_rows_per_s']} test rows/s, "
             f"{k['similarity_gflop_per_s_warm']} GFLOP/s in the similarities; accuracy weighted "
             f"{k['accuracy_weighted']:.3f}, majority {k['accuracy_majority']:.3f} |",
             f"| few-shot, {f['fits']} ridge fits | {f['seconds']} | accuracy by shots: "
             + ", ".join(f"{n}: {a['mean']:.3f}" for n, a in f["accuracy"].items()) + " |"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe_suite", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10,000 x 256 train, 2,000 test, 100 classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    out = args.out or run.RESULTS / ("probe_suite_quick.json" if args.quick else "probe_suite.json")
    data, seconds = timed(lambda: problem(**size, seed=args.seed))
    print(f"problem {size} drawn in {seconds:.1f} s")
    result = {**run.header("probe_suite", argv, ("research", "jax", "jaxlib", "numpy", "scikit-learn")),
              "problem": {**size, "seed": args.seed, "kind": "synthetic Gaussian clusters, one per class"}}
    result["knn"] = knn_case(*data, size["classes"])
    print(f"knn: {result['knn']}")
    result["fewshot"] = fewshot_case(*data, size["classes"])
    run.write(result, out, markdown)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
