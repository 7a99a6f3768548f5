"""Speed of the forward, the train steps, the data path and the probes, against Keras 3 on JAX, PyTorch on the
CPU (the mobile models) and the device's matmul peak.

    python -m benchmarks.run --quick                      # CPU-sized: 224 px, batch 8, 3 repeats, ~6 min on 2 cores
    python -m benchmarks.run --cases a --models resnet50 --image-size 224 --batch-size 16
    research bench ...                                    # the same flags

Writes JSON (machine, versions, date, the command, every case, ratios, pass/fail targets, notes) and a markdown
table beside it. Only argparse is imported at module level, so `research` can build its parser cheaply.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In a source checkout results go beside this file (they are tracked); installed, under ./benchmarks/results.
RESULTS = HERE / "results" if (HERE.parent / "pyproject.toml").is_file() else Path("benchmarks") / "results"
CASES = "abcdefg"
# Quick keeps the cases' 224 px: at 64 px the per-step work that does not scale with the input (Adam over
# stage4's 15M parameters, decoding a full-size JPEG) outweighs 8 tiny images, so the cost ratios stop
# describing the workload the targets are about (results/cpu_64px.md keeps such a run).
QUICK = {"image_size": 224, "batch": 8, "repeats": 3, "images": 32}
FULL = {"image_size": 224, "batch": 32, "repeats": 10, "images": None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="CPU sizes: 224 px, batch 8, 3 repeats, 32 images for e/f, "
                   "the small probe problem")
    p.add_argument("--cases", default=CASES, help="a,b,...: a forward, b head / c top-block / d full train step, "
                   "e loader, f features.dump, g probes (default: all)")
    p.add_argument("--models", default="resnet50,vgg16,mobilenet_v2,efficientnet_lite0",
                   help="arch or arch:layout, comma-separated")
    p.add_argument("--image-size", type=int, help="default 224")
    p.add_argument("--batch-size", help="N, or per model: resnet50=256,vgg16=128 (default 32, 8 with --quick)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, help="timed repeats per case (default 10, 3 with --quick)")
    p.add_argument("--images", type=int, help="images for e/f (default: all of the data; 32 with --quick)")
    p.add_argument("--data", help="a class-folder tree for e/f (default ../shared/datasets/flowers17, else generated)")
    p.add_argument("--no-keras", action="store_true", help="skip the Keras 3 peer")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch CPU peer (mobile models)")
    p.add_argument("--xla-cpu", choices=["eigen", "default"],
                   help="how our functions compile on CPU (research/xla.py): eigen, research's default (XLA's "
                   "convolutions, YNNPACK reductions), or XLA's own default (YNNPACK for both); the Keras peer always "
                   "gets XLA's default")
    p.add_argument("--out", help="the JSON to write (default benchmarks/results/cpu_quick.json with --quick, "
                   "else benchmarks/results/<backend>.json); the .md goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    from research.errors import UserError
    try:
        bench(args, command)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def bench(args, command: str) -> Path:
    """Runs what `args` asks for and writes the JSON and markdown; returns the JSON's path."""
    import jax
    from research import xla

    if args.xla_cpu:
        os.environ[xla.ENV] = args.xla_cpu
    options = resolve(args)
    out = output_path(args, jax.default_backend())
    result = measure(options, command, save=lambda partial: write(partial, out))
    write(result, out)
    print(Path(out.with_suffix(".md")).read_text())
    print(f"-> {out}")
    return out


def resolve(args) -> dict:
    """The flags checked and filled in from the --quick / full defaults."""
    from research.errors import UserError

    base = QUICK if args.quick else FULL
    cases = args.cases.replace(",", "")
    if not cases or set(cases) - set(CASES):
        raise UserError(f"--cases takes letters from {','.join(CASES)}, got {args.cases!r}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UserError("--models names no model")
    from .models import spec_of
    for name in models:
        spec_of(name)
    for name, value in (("--image-size", args.image_size), ("--repeats", args.repeats), ("--images", args.images)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    return {"quick": args.quick, "cases": cases, "models": models, "dtype": args.dtype,
            "image_size": args.image_size or base["image_size"], "batch": batches(args.batch_size, models,
                                                                                  base["batch"]),
            "repeats": args.repeats or base["repeats"], "images": args.images or base["images"],
            "data": args.data, "keras": not args.no_keras, "torch": not args.no_torch, "xla_cpu": xla_cpu()}


def xla_cpu() -> str | None:
    """The CPU lowering our functions got (research/xla.py), or None off CPU."""
    from research import xla

    return f"{xla.cpu_mode()} {xla.options() or {}}" if xla.on_cpu() else None


def batches(text: str | None, models: list, default: int) -> dict:
    """`--batch-size` as {model: batch}: one number for all, or name=N pairs (unnamed models get the default)."""
    from research.errors import UserError

    out = dict.fromkeys(models, default)
    try:
        if text and "=" not in text:
            out = dict.fromkeys(models, int(text))
        elif text:
            for item in text.split(","):
                name, _, n = item.partition("=")
                if name.strip() not in out:
                    raise UserError(f"--batch-size names {name.strip()!r}, which is not in --models")
                out[name.strip()] = int(n)
    except ValueError:
        raise UserError(f"--batch-size takes N or name=N,..., got {text!r}") from None
    if min(out.values()) < 1:
        raise UserError(f"batch sizes must be at least 1, got {text!r}")
    return out


def output_path(args, backend: str) -> Path:
    from research.errors import UserError

    out = Path(args.out) if args.out else RESULTS / ("cpu_quick.json" if args.quick else f"{backend}.json")
    if out.suffix != ".json":
        raise UserError(f"--out must end in .json, got {out}")
    if (out.exists() or out.with_suffix(".md").exists()) and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def measure(o: dict, command: str, save=None) -> dict:
    """The whole result; `save(result)` also gets it after each case, marked incomplete, so a run cut short by a
    time limit (the GPU script's) still leaves every case it finished."""
    from . import keras_peer, timing

    result = {"benchmark": "bench", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": command, "machine": timing.machine(), "versions": timing.versions(),
              "params": {k: o[k] for k in ("quick", "cases", "models", "dtype", "image_size", "batch", "repeats",
                                           "images", "keras", "torch", "xla_cpu")}, "peak": peaks(o), "models": {}, "notes": []}
    keras, why = keras_peer.load() if o["keras"] else (None, "peer off (--no-keras)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = data_cases(o, result, tmp) if set("ef") & set(o["cases"]) else None
        for name in o["models"]:
            def progress(model, name=name):
                result["models"][name] = model
                if save:
                    save(summarise(result, complete=False))

            model_cases(name, o, result["peak"], keras, why, data, tmp, progress)
        if "g" in o["cases"]:
            from . import pipeline
            result["probe"] = pipeline.probes(o["quick"], tmp)
    return summarise(result, complete=True)


def summarise(result: dict, complete: bool) -> dict:
    """Ratios, targets and evidence derived from what has been measured so far."""
    from . import report

    for model in result["models"].values():
        model["ratios"] = report.ratios(model)
    result["complete"] = complete
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = report.targets(result)
    result["notes"] = report.evidence(result)
    return result


def peaks(o: dict) -> dict:
    """The matmul ceiling in the run's dtype, and float32 for reference."""
    import jax
    from . import timing

    size = 2048 if jax.default_backend() == "cpu" else 16384
    dtypes = dict.fromkeys(("float32", o["dtype"]))
    return {d: timing.matmul_peak(d, size, 5 if o["quick"] else 10) for d in dtypes}


def data_cases(o: dict, result: dict, tmp: Path) -> dict:
    """Case e, and the JPEG folder and pack that case f reads."""
    from . import pipeline
    from research.errors import UserError

    if o["data"]:
        if not Path(o["data"]).is_dir():
            raise UserError(f"--data {o['data']} is not a folder")
        from research.data import open as open_data
        folder = pipeline.data_speed.subset(open_data(o["data"]), o["images"], tmp / "images")
        origin = o["data"]
    else:
        folder, origin = pipeline.image_folder(tmp / "images", o["images"])
    result["params"]["data"] = origin
    result["loader"] = pipeline.loader(folder, o["image_size"], o["quick"], tmp)
    return {"jpeg": folder, "pack": tmp / "p.h5"}


def model_cases(name: str, o: dict, peak: dict, keras, why, data, tmp: Path, progress) -> dict:
    """Our cases a-d, each raced against its Keras twin, then f; `progress(model)` after each."""
    from . import keras_peer, models, timing, torch_peer

    batch = o["batch"][name]
    s = models.setup(name, o["image_size"], batch, o["dtype"])
    ceiling = peak[o["dtype"]]["flop_per_s"]
    why = why or keras_peer.absent_reason(s.spec) or (None if set("abcd") & set(o["cases"]) else "no case a-d")
    peer = None if why else keras_peer.Peer(keras, s, models.CLASSES)
    why_torch = (torch_peer.absent_reason(s.spec, o["dtype"]) if o["torch"] else "peer off (--no-torch)")
    torch = None if why_torch else torch_peer.Peer(s, models.CLASSES)
    cases, peer_cases, torch_cases, forward = {}, {}, {}, models.forward(s)
    model = {"spec": s.spec.to_dict(), "preprocessing": s.preprocessing, "image_size": o["image_size"],
             "batch": batch, "dtype": o["dtype"], "cases": cases, "keras": {"absent": why} if why else peer_cases,
             "torch": {"absent": why_torch} if why_torch else torch_cases}
    # a first (the others' cost is relative to it), then the train steps in the order asked for
    for case in "a" + "".join(c for c in o["cases"] if c in "bcd"):
        if case not in o["cases"] and not (case == "a" and "f" in o["cases"]):
            continue
        # a train step races our forward too, so its cost vs (a) is measured under the same load
        runners = {"ours": forward} if case == "a" else {"ours": models.train(s, models.PRESETS[case]),
                                                         "ours:a": forward}
        for other in (peer, torch):
            if other and case in o["cases"]:
                runners.update(other.runners(case, models.PRESETS.get(case)))
        timed = timing.race(runners, o["repeats"], batch, ceiling)
        cases[case] = timed.pop("ours")
        if "ours:a" in timed:
            cases[case]["a_same_race_img_per_s"] = timed.pop("ours:a")["img_per_s"]
        for prefix, into in (("keras:", peer_cases), ("torch:", torch_cases)):
            ways = {k.removeprefix(prefix): v for k, v in timed.items() if k.startswith(prefix)}
            into.update({case: ways} if ways else {})
        progress(model)
    if "f" in o["cases"]:
        cases.update(dump_cases(s, o, data, tmp, forward))
        progress(model)
    return model


# Case f's inputs: (the data it reads, --decode). jpeg decodes in CPU worker processes (folders of 256+ images),
# jpeg_gpu with nvImageCodec on the device where `--decode gpu` can run.
DUMP_KINDS = {"pack": ("pack", "default"), "jpeg": ("jpeg", "default"), "jpeg_gpu": ("jpeg", "gpu")}


def dump_cases(s, o: dict, data: dict, tmp: Path, forward) -> dict:
    """Case f on the pack, on the JPEG folder, and on it with `--decode gpu`, computing in the run's dtype
    (`research features --compute-dtype`), raced against our forward in that dtype over as many batches, so the ratios compare runs under the same load; the warm-up
    run compiles. A kind that cannot run here is recorded as absent, with the reason."""
    from . import pipeline, timing
    from research.data import loader, open as open_data

    count, batch = len(open_data(str(data["jpeg"]))), len(s.labels)

    def forward_epoch():
        return [forward.call() for _ in range(-(-count // batch))]

    def dump_run(kind):
        folder, decode = DUMP_KINDS[kind]
        return lambda: pipeline.dump(s.bundle, s.tap, data[folder], o["image_size"], batch, tmp / f"{kind}.h5",
                                     decode, o["dtype"])

    absent = {"jpeg_gpu": gpu_decode_absent()}
    runners = {"forward": timing.Runner(forward_epoch)}
    runners.update({kind: timing.Runner(dump_run(kind)) for kind in DUMP_KINDS if not absent.get(kind)})
    timed = timing.race(runners, o["repeats"], count, None)
    reference = timed.pop("forward")["img_per_s"]
    how = {"pack": {}, "jpeg": {"workers": loader.default_workers()}, "jpeg_gpu": {"decode_backend": None}}
    if "jpeg_gpu" in timed:
        from research.data import gpu_decode
        how["jpeg_gpu"]["decode_backend"] = gpu_decode.backend()
    out = {f"f_{kind}": {**record, **how[kind], "images": count, "forward_img_per_s": reference,
                         "forward_dtype": o["dtype"]}
           for kind, record in timed.items()}
    return out | {f"f_{kind}": {"absent": why} for kind, why in absent.items() if why}


def gpu_decode_absent() -> str | None:
    """Why `--decode gpu` cannot run here (its one-line UserError), or None."""
    from research.errors import UserError

    try:
        from research.data import gpu_decode
        gpu_decode.check()
    except UserError as e:
        return str(e)
    return None


def header(benchmark: str, argv, versions: tuple) -> dict:
    """The fields every result of `python -m benchmarks.<benchmark>` starts with: what ran, when, where, with what."""
    from . import timing

    return {"benchmark": benchmark,
            "command": f"python -m benchmarks.{benchmark} " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": timing.machine(), "versions": timing.versions(versions)}


def write(result: dict, out: Path, render=None) -> None:
    """JSON and markdown (`render`, default the bench table), each to a temporary name first, so a killed run
    leaves no half file."""
    import json
    from . import report

    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, json.dumps(result, indent=2, default=str)),
                       (out.with_suffix(".md"), (render or report.markdown)(result))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text.rstrip("\n") + "\n")
        os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
