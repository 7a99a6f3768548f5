"""`research SUBCOMMAND ...`: each subcommand parses its arguments, calls one library function, and prints.

Bad input ends in `error: <one line>` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from research.errors import UserError


def cmd_convert(args) -> None:
    from research import load, preprocess

    bundle = load(args.src, arch=args.arch)
    out = bundle.save(args.out, overwrite=args.overwrite)
    spec = bundle.spec
    stats = sum(x.size for x in _leaves(bundle.variables.get("batch_stats", {})))
    top = f"top, {spec.num_classes} classes" if spec.num_classes else "no top"
    print(f"{spec.arch} ({spec.layout} layout, {top}): {bundle.num_params:,} params + {stats:,} BN statistics; "
          f"preprocessing {bundle.preprocessing} ({preprocess.DESCRIPTIONS[bundle.preprocessing]}) -> {out}")


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def cmd_pack(args) -> None:
    from research.data import pack

    result = pack.write(args.data, args.out, args.image_size, resize=args.resize, interpolation=args.interpolation,
                        split_test=args.split_test, split_val=args.split_val, seed=args.seed,
                        overwrite=args.overwrite, workers=args.workers)
    print(result.summary())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="research", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic", "lanczos"])
    p.add_argument("--split-test", type=float, default=0.0, help="fraction of each class to put in test")
    p.add_argument("--split-val", type=float, default=0.0, help="fraction of each class to put in validation")
    p.add_argument("--seed", type=int, default=0, help="the seed of the split")
    p.add_argument("--workers", type=int, help="decoding threads (default: up to 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_pack)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
