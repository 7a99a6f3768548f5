"""Cases e-g: the data path and the probes, reusing benchmarks/data_speed.py and benchmarks/probe_speed.py so
that each number has one definition."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import data_speed, probe_speed

FLOWERS = data_speed.DEFAULT_DATA


def image_folder(dest: Path, limit: int | None, seed: int = 0) -> tuple[Path, str]:
    """(a class-folder tree of JPEGs, where it came from): a seeded subset of flowers17 when it is there, else
    generated 320x240 photos-like JPEGs, so the case runs anywhere."""
    from research.data import open as open_data

    if FLOWERS.is_dir():
        return data_speed.subset(open_data(str(FLOWERS)), limit, dest), str(FLOWERS)
    from PIL import Image

    rng = np.random.default_rng(seed)
    count = limit or 160
    for i in range(count):
        folder = dest / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        Image.fromarray(smooth).save(folder / f"{i:04d}.jpg", quality=90)
    return dest, f"generated ({count} JPEGs, 320x240)"


def loader(folder: Path, image_size: int, quick: bool, tmp: Path) -> dict:
    """Case e: `data_speed.run` (decode+resize by thread count, pack write and read); leaves tmp/p.h5."""
    args = argparse.Namespace(data=str(folder), image_size=image_size, quick=quick)
    result = data_speed.run(folder, args, tmp)
    keep = ("decode_resize_img_per_s", "decode_processes_img_per_s", "process_scaling", "decode_fast_speedup",
            "pack_write_s", "pack_read_img_per_s", "epoch_s", "epoch_ratio_jpeg_over_pack")
    return {"images": result["params"]["images"], "image_size": image_size, **{k: result[k] for k in keep}}


def dump(bundle, tap: str, data: Path, image_size: int, batch: int, out: Path, decode: str = "default",
         compute: str = "float32") -> None:
    """Case f, one run: `research.features.dump` end to end (load, forward, HDF5 write), as the CLI runs it."""
    from research.features import dump as dump_features

    dump_features(bundle, str(data), [tap], out, image_size=image_size, resize="direct", batch_size=batch,
                  overwrite=True, progress=False, decode=decode, compute=compute)


def probes(quick: bool, tmp: Path) -> dict:
    """Case g: `probe_speed` on a synthetic N x D problem: scikit-learn against JAX L-BFGS, fit seconds."""
    size = ["--quick"] if quick else ["--n", "20000", "--d", "1024", "--classes", "50"]
    result = probe_speed.main([*size, "--out", str(tmp / "probe_speed.json")])
    return {"problem": result["problem"], "runs": result["runs"],
            "speedup_lbfgs_warm_over_sklearn": round(result["speedup_warm"], 2)}
