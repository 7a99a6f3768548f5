"""How fast images reach the model: JPEG decode+resize by worker count, pack reads, and on-device augmentation.

    python -m benchmarks.data_speed [--data DIR] [--limit N] [--image-size 224] [--quick] [--out FILE]

Measures, on a class-folder tree (default ../shared/datasets/flowers17):
- decode+resize img/s from the JPEG files with 1, 2, 4, ... up to os.cpu_count() loader threads, and as many
  decoding processes (the loader's way for folders of loader.PROCESS_MIN images or more), pool start included,
  all raced in turn, the best pass of each kept (the first pass also starts multiprocessing's fork server);
  the scaling of N processes over one worker (the loader's own process, one thread), which the issue wants >= 0.8;
- `--decode fast` (JPEGs decoded at a reduced DCT scale) against the default decode, one worker, raced in turn;
- the time to write a pack, and pack-read img/s;
- the epoch-time ratio JPEG (best worker count) / pack: how much a pack saves per epoch;
- augmentation img/s on the default JAX device (the CPU here) for one batch, compile time apart.
Files are read once before timing, so every case starts from the page cache. Writes JSON with the machine,
versions and date to benchmarks/results/data_speed.json (data_speed_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from research.data import loader, open as open_data, pack, resize  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "flowers17"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 64


def main(argv=None) -> int:
    args = parse(argv)
    source = open_data(args.data)
    limit = args.limit or (160 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(source, limit, Path(tmp) / "images")
        result = run(folder, args, Path(tmp))
    out = Path(args.out or RESULTS / ("data_speed_quick.json" if args.quick else "data_speed.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"-> {out}")
    return 0


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a class-folder tree")
    p.add_argument("--limit", type=int, help="use N images (a seeded pick across classes)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="160 images, fewer repeats, a smaller augment batch")
    p.add_argument("--out", help="the JSON to write")
    return p.parse_args(argv)


def subset(source, limit, dest: Path) -> Path:
    """A folder of symlinks to `limit` of the source's images (all when None), so that pack sees the same set."""
    picks = np.arange(len(source)) if not limit else np.sort(loader.ordering(len(source), 0, True)[:limit])
    for i in picks:
        link = dest / source.paths[i]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.file(int(i)).resolve())
    return dest


def run(folder: Path, args, tmp: Path) -> dict:
    source = open_data(folder)
    size = args.image_size
    warm_page_cache(source)
    workers = worker_counts(os.cpu_count() or 1)
    ways = {(w, False): lambda w=w: batches(source, size, w, processes=False) for w in workers}
    ways.update({(w, True): lambda w=w: batches(source, size, w, processes=True) for w in workers if w > 1})
    # every way in turn within each pass, the best pass kept, so load from other processes falls on all alike
    raced = race(ways, len(source), 2 if args.quick else 3)
    decode = {w: raced[w, False] for w in workers}
    processes = {w: raced[w, True] for w in workers if w > 1}
    fast = race({"default": lambda: batches(source, size, 1, False),
                 "fast": lambda: batches(source, size, 1, False, policy=resize.policy("direct", "bilinear", "fast"))},
                len(source), 2 if args.quick else 3)
    start = time.perf_counter()
    pack.write(folder, tmp / "p.h5", size, workers=max(workers), progress=False)
    pack_seconds = time.perf_counter() - start
    packed = open_data(tmp / "p.h5")
    pack_read = rate(lambda: loader.batches(packed, None, BATCH), len(packed), repeats=3)
    best = max(*decode.values(), *processes.values())
    return {
        "benchmark": "data_speed", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(),
        "params": {"data": str(args.data), "images": len(source), "image_size": size, "batch": BATCH,
                   "quick": args.quick},
        "decode_resize_img_per_s": {str(w): round(r, 1) for w, r in decode.items()},
        "decode_processes_img_per_s": {str(w): round(r, 1) for w, r in processes.items()},
        "process_scaling": {str(w): round(r / (w * decode[1]), 3) for w, r in processes.items()},
        "decode_fast_one_worker_img_per_s": fast, "decode_fast_speedup": round(fast["fast"] / fast["default"], 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "pack_write_s": round(pack_seconds, 2), "pack_mib": round((tmp / "p.h5").stat().st_size / 2**20, 1),
        "pack_read_img_per_s": round(pack_read, 1),
        "epoch_s": {"jpeg_best_workers": round(len(source) / best, 3), "pack": round(len(source) / pack_read, 3)},
        "epoch_ratio_jpeg_over_pack": round(pack_read / best, 2),
        "augment": augment_rate(size, 16 if args.quick else BATCH, 3 if args.quick else 10),
    }


def batches(source, size: int, workers: int, processes: bool, **kw):
    """The loader's batches with `workers` threads or processes, whatever the folder's size."""
    from unittest import mock

    with mock.patch.object(loader, "PROCESS_MIN", 0 if processes else float("inf")):
        return list(loader.batches(source, None, BATCH, size, workers=workers, **kw))  # the pool runs inside


def warm_page_cache(source) -> None:
    for i in range(len(source)):
        source.file(i).read_bytes()


def worker_counts(cpus: int) -> list[int]:
    counts = [1]
    while counts[-1] * 2 <= cpus:
        counts.append(counts[-1] * 2)
    return counts if counts[-1] == cpus else counts + [cpus]


def race(ways: dict, count: int, repeats: int) -> dict:
    """{way: img/s, the best of `repeats`}, the ways timed in turn within each repeat."""
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats):
        for way, make in ways.items():
            start = time.perf_counter()
            make()
            best[way] = min(best[way], time.perf_counter() - start)
    return {way: round(count / seconds, 1) for way, seconds in best.items()}


def rate(make_batches, count: int, repeats: int = 1) -> float:
    """Images per second over full passes; the best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        seen = sum(len(b["index"]) for b in make_batches())
        best = min(best, time.perf_counter() - start)
        assert seen == count, f"read {seen} of {count} images"
    return count / best


def augment_rate(size: int, batch: int, repeats: int) -> dict:
    """img/s of the default Keras-like config (plus a random-resized crop) on one batch, after compiling."""
    import jax

    from research.data.augment import AugmentConfig, augment  # JAX: imported here, not where decoding workers start

    cfg = AugmentConfig(crop_scale=(0.25, 1.0))
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    start = time.perf_counter()
    augment(jax.random.key(0), images, cfg).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        augment(jax.random.key(i + 1), images, cfg).block_until_ready()
        times.append(time.perf_counter() - start)
    return {"device": str(jax.devices()[0]), "batch": batch, "first_call_s": round(compile_s, 2),
            "img_per_s": round(batch / float(np.median(times)), 1)}


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version()}


def versions() -> dict:
    from . import timing

    return timing.versions(("research", "jax", "jaxlib", "numpy", "pillow", "grain", "h5py"))


def summary(result: dict) -> str:
    decode = ", ".join(f"{w} thr {r:.0f}" for w, r in result["decode_resize_img_per_s"].items())
    decode += "; " + ", ".join(f"{w} proc {r:.0f} ({result['process_scaling'][w]:.2f} of {w}x one worker)"
                               for w, r in result.get("decode_processes_img_per_s", {}).items())
    return (f"{result['params']['images']} images at {result['params']['image_size']}px: decode+resize img/s "
            f"{decode}; --decode fast {result['decode_fast_speedup']}x on one worker; pack read {result['pack_read_img_per_s']:.0f} img/s; epoch JPEG/pack "
            f"{result['epoch_ratio_jpeg_over_pack']}x; augment {result['augment']['img_per_s']:.0f} img/s "
            f"(batch {result['augment']['batch']}, {result['augment']['device']})")


if __name__ == "__main__":
    sys.exit(main())
