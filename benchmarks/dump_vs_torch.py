"""`research features` end to end against a plain PyTorch + PIL script on the same JPEGs (issue 14's target:
at least as fast, with the same features).

Both sides run EfficientNet-Lite0 with its bundled ImageNet weights on the same class folders, as whole commands
in fresh processes (imports, weight loading and compiling included, as a user times them), one after the other,
best of `--repeats`:
- ours: `research features WEIGHTS DATA --tap pre_logits --resize direct --image-size 224 --batch-size 32`;
- theirs (`PLAIN`, below): PIL decode, `resize((224, 224), BILINEAR)`, the model's own normalisation, a
  `torch.utils.data.DataLoader` with one worker process per core, `inference_mode`, channels-last, features
  saved with NumPy.
Each side's steady img/s (after its first batch) is taken from its own clock as well. The features are compared
row by row (relative to the largest value), since both decode with PIL.

    python -m benchmarks.dump_vs_torch [--data DIR] [--limit N] [--repeats 2]

Writes benchmarks/results/dump_vs_torch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import data_speed
from .run import header, write

OUT = Path(__file__).resolve().parent / "results" / "dump_vs_torch.json"

# What a user writes with PyTorch and PIL: the reference side, kept plain on purpose.
PLAIN = r'''
import json, os, sys, time
import numpy as np, torch
from PIL import Image
from efficientnet_lite_pytorch import EfficientNet

root, weights, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
start = time.perf_counter()
torch.set_num_threads(len(os.sched_getaffinity(0)))
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith((".jpg", ".jpeg")))

class Files(torch.utils.data.Dataset):
    def __len__(self):
        return len(files)
    def __getitem__(self, i):
        image = Image.open(files[i]).convert("RGB").resize((224, 224), Image.BILINEAR)
        return (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() - 127.0) / 128.0  # TF-Lite's

model = EfficientNet.from_name("efficientnet-lite0")
model.load_state_dict(torch.load(weights, map_location="cpu"))
model = model.eval().to(memory_format=torch.channels_last)
loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=len(os.sched_getaffinity(0)))
rows, first = [], None
with torch.inference_mode():
    for x in loader:
        rows.append(model.extract_features(x.contiguous(memory_format=torch.channels_last)).mean((2, 3)).numpy())
        first = first or (time.perf_counter(), sum(len(r) for r in rows))
np.save(out, np.concatenate(rows))
end = time.perf_counter()
print(json.dumps({"files": files, "seconds": end - start, "steady": (len(files) - first[1]) / (end - first[0])}))
'''


def ours(weights: Path, data: Path, out: Path, batch: int) -> dict:
    """`research features` as a fresh process: (wall seconds, steady img/s from its own summary, features)."""
    command = [sys.executable, "-m", "research.cli", "features", "--weights", str(weights), "--data", str(data), "--tap", "pre_logits",
               "--resize", "direct", "--image-size", "224", "--batch-size", str(batch), "--out", str(out),
               "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"research features failed: {done.stderr.strip().splitlines()[-1:]}")
    from research.features import hdf5
    stored = hdf5.read(out)
    return {"seconds": seconds, "features": stored["features"]["pre_logits"],
            "paths": [str(data / p) for p in stored["paths"]]}


def theirs(weights: Path, data: Path, out: Path, batch: int) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PLAIN, str(data), str(weights), str(out), str(batch)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"the PyTorch script failed: {done.stderr.strip().splitlines()[-1:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "steady_img_per_s": record["steady"], "features": np.load(out),
            "paths": record["files"]}


def agreement(a: dict, b: dict) -> float:
    """The largest difference between the two sides' rows for the same files, relative to the largest value."""
    order = {p: i for i, p in enumerate(b["paths"])}
    rows = np.array([order[p] for p in a["paths"]])
    ours_rows, their_rows = a["features"], b["features"][rows]
    return float(np.abs(ours_rows - their_rows).max() / np.abs(their_rows).max())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_speed.DEFAULT_DATA), help="a class-folder tree of JPEGs")
    parser.add_argument("--limit", type=int, default=None, help="a seeded subset of this many images")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from research.data import open as open_data
    from research.weights.efficientnet_lite import bundled_path

    weights = bundled_path()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.limit is None else data_speed.subset(open_data(args.data), args.limit,
                                                                             tmp / "data")
        runs = {"ours": [], "pytorch": []}
        for _ in range(args.repeats):  # in turn, so that load on the machine hits both alike
            runs["ours"].append(ours(weights, data, tmp / "ours.h5", args.batch_size))
            runs["pytorch"].append(theirs(weights, data, tmp / "theirs.npy", args.batch_size))
        count = len(runs["ours"][0]["paths"])
        best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
        result = {**header("dump_vs_torch", argv, ("jax", "jaxlib", "torch", "pillow", "numpy")),
                  "params": {"data": str(args.data), "images": count, "batch": args.batch_size,
                             "repeats": args.repeats, "cpus": len(os.sched_getaffinity(0)),
                             "load_average": os.getloadavg()},
                  "seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in runs.items()},
                  "img_per_s": {k: round(count / s, 1) for k, s in best.items()},
                  "pytorch_steady_img_per_s": round(max(r["steady_img_per_s"] for r in runs["pytorch"]), 1),
                  "ours_over_pytorch": round(best["pytorch"] / best["ours"], 3),
                  "features_max_relative_difference": agreement(runs["ours"][0], runs["pytorch"][0])}
    write(result, args.out, render=lambda r: "```json\n" + json.dumps(r, indent=2, default=str) + "\n```")
    print(json.dumps({k: result[k] for k in ("img_per_s", "ours_over_pytorch",
                                             "features_max_relative_difference")}))
    return result


if __name__ == "__main__":
    main()
