"""The evidence for research's two CPU lowering choices, each raced against the alternative in one process:

1. convolutions on maps smaller than their kernel as one matrix product (research/models/layers.py) against
   `lax.conv_general_dilated`, which XLA:CPU rewrites into a slow reversed-window form there;
2. our forward compiled with research/xla.py's CPU options against XLA's defaults (YNNPACK convolutions).

    python -m benchmarks.lowering [--quick] [--out benchmarks/results/cpu_lowering.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import models, run, timing

MAPS = (1, 2, 4)  # 3x3 convs, 512 -> 512 channels, batch 8: 4 is above the switch, as a control
FORWARDS = (("resnet50", 64, 8), ("vgg16", 64, 8), ("resnet50", 224, 16), ("vgg16", 224, 8))
QUICK_FORWARDS = FORWARDS[:2]


def conv_case(size: int, repeats: int) -> dict:
    from research.models.layers import conv_general_dilated

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, size, size, 512)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 512, 512)) / 48, jnp.float32)
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def runner(conv):
        fn = jax.jit(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers))
        compiled, compile_s, flops = timing.compile_aot(fn, x, w)
        return timing.Runner(lambda: compiled(x, w), compile_s, flops)

    runners = {"lax": runner(lax.conv_general_dilated), "research": runner(conv_general_dilated)}
    out = {name: record for name, record in timing.race(runners, repeats, 8, None).items()}
    diff = jnp.abs(runners["lax"].call() - runners["research"].call()).max() / jnp.abs(runners["lax"].call()).max()
    return {"map": f"{size}x{size}", **out, "speedup": round(out["lax"]["step_ms"] / out["research"]["step_ms"], 2),
            "max_rel_diff": float(diff)}


def forward_case(name: str, size: int, batch: int, repeats: int) -> dict:
    from research import xla
    from research.bundle import forward_body

    s = models.setup(name, size, batch, "float32")
    fn = jax.jit(forward_body(s.spec, (s.tap,), "float32", s.preprocessing))
    variables = jax.device_put(s.bundle.variables)
    runners, outputs = {}, {}
    for mode, options in xla.CPU_MODES.items():
        compiled = fn.lower(variables, s.images).compile(compiler_options=options)
        runners[mode] = timing.Runner(lambda c=compiled: c(variables, s.images),
                                      extra={"hlo": models.hlo_counts(compiled)})
        outputs[mode] = np.asarray(runners[mode].call()[s.tap])
    out = timing.race(runners, repeats, batch, None)
    ref = outputs["default"]
    return {"model": name, "image_size": size, "batch": batch, **out,
            "speedup": round(out["default"]["step_ms"] / out["eigen"]["step_ms"], 2),
            "max_rel_diff": float(np.abs(outputs["eigen"] - ref).max() / np.abs(ref).max())}


def markdown(result: dict) -> str:
    lines = [f"## CPU lowering choices {result['date']}", "", f"`{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             "3x3 convolution, 512 -> 512 channels, batch 8, float32:", "",
             "| map | lax.conv_general_dilated ms | research ms | speedup | max rel diff |", "|---|---|---|---|---|"]
    lines += [f"| {c['map']} | {c['lax']['step_ms']:.2f} | {c['research']['step_ms']:.2f} | {c['speedup']}x "
              f"| {c['max_rel_diff']:.1e} |" for c in result["conv"]]
    lines += ["", "Our forward (uint8 in, preprocessing included), XLA's CPU defaults against research/xla.py's:", "",
              "| model | px | batch | XLA default img/s | research img/s | speedup | max rel diff |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {f['model']} | {f['image_size']} | {f['batch']} | {f['default']['img_per_s']:.1f} "
              f"| {f['eigen']['img_per_s']:.1f} | {f['speedup']}x | {f['max_rel_diff']:.1e} |"
              for f in result["forward"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lowering", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 px forwards only, 3 repeats")
    p.add_argument("--out", default=str(run.RESULTS / "cpu_lowering.json"))
    args = p.parse_args(argv)
    repeats = 3 if args.quick else 7
    result = {"benchmark": "lowering", "command": "python -m benchmarks.lowering " + " ".join(argv or sys.argv[1:]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": timing.machine(), "versions": timing.versions(("jax", "jaxlib", "flax")),
              "conv": [conv_case(size, repeats) for size in MAPS],
              "forward": [forward_case(*case, repeats) for case in (QUICK_FORWARDS if args.quick else FORWARDS)]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
