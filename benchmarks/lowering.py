"""The evidence for research's CPU lowering choices, each raced against the alternative in one process:

1. convolutions on maps smaller than their kernel as one matrix product (research/models/layers.py) against
   `lax.conv_general_dilated`, which XLA:CPU rewrites into a slow reversed-window form there;
2. our forward and train step compiled with research/xla.py's CPU options (YNNPACK for reductions only) against
   XLA's defaults and against YNNPACK off altogether;
3. max-pooling from strided slices (layers.max_pool) against a `reduce_window`, under those options;
4. 1x1 convolutions as a matmul (lowering.conv_general_dilated) against lax's, in ResNet-50's train steps, where
   XLA:CPU's convolution weight gradients transpose the activations;
5. depthwise convolutions as shifted multiply-adds and grouped convolutions' weight gradients as batched matmuls
   (lowering.grouped) against lax's grouped convolutions: alone (forward, input and weight gradients) and in
   MobileNetV2's and EfficientNet-Lite0's forwards and train steps.

    python -m benchmarks.lowering [--quick] [--out benchmarks/results/cpu_lowering.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import models, run, timing
from research.parity import relative_error

MAPS = (1, 2, 4)  # 3x3 convs, 512 -> 512 channels, batch 8: 4 is above the switch, as a control
FORWARDS = (("resnet50", 64, 8), ("vgg16", 64, 8), ("resnet50", 224, 16), ("vgg16", 224, 8))
QUICK_FORWARDS = FORWARDS[:2]
STEPS = (("resnet50", 64, 8), ("resnet50", 224, 16))
QUICK_STEPS = STEPS[:1]
POOLS = (("vgg16", 64, 8),)
POINTWISE = (("resnet50", 64, 8, "top_block"), ("resnet50", 224, 16, "top_block"), ("resnet50", 224, 16, "all"))
QUICK_POINTWISE = POINTWISE[:1]
# (what, NHWC input, kernel, stride, groups), float32, SAME padding
GROUPED = (("MobileNetV2 block 2 depthwise", (8, 112, 112, 96), 3, 1, 96),
           ("MobileNetV2 block 3 depthwise, stride 2", (8, 112, 112, 144), 3, 2, 144),
           ("Lite0 stage 6 depthwise 5x5", (8, 14, 14, 672), 5, 1, 672),
           ("ConvNeXt-T stage 1 depthwise 7x7", (8, 56, 56, 96), 7, 1, 96),
           ("ResNeXt-50 32x4d stage 1 grouped (batch 2: lax's weight gradient takes seconds)", (2, 56, 56, 128), 3, 1, 32))
QUICK_GROUPED = GROUPED[:1] + GROUPED[3:]
MOBILE = (("mobilenet_v2", 224, 8, None), ("mobilenet_v2", 224, 8, "top_block"), ("mobilenet_v2", 224, 8, "all"),
          ("efficientnet_lite0", 224, 8, None), ("efficientnet_lite0", 224, 8, "top_block"),
          ("efficientnet_lite0", 224, 8, "all"))
QUICK_MOBILE = (MOBILE[0], MOBILE[1], MOBILE[3])


def conv_case(size: int, repeats: int) -> dict:
    from research.models.lowering import conv_general_dilated

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, size, size, 512)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 512, 512)) / 48, jnp.float32)
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def runner(conv):
        fn = jax.jit(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers))
        compiled, compile_s, flops = timing.compile_aot(fn, x, w)
        return timing.Runner(lambda: compiled(x, w), compile_s, flops)

    runners = {"lax": runner(lax.conv_general_dilated), "research": runner(conv_general_dilated)}
    out = timing.race(runners, repeats, 8, None)
    return {"map": f"{size}x{size}", **out, "speedup": round(out["lax"]["step_ms"] / out["research"]["step_ms"], 2),
            "max_rel_diff": relative_error(runners["research"].call(), runners["lax"].call())}


def variants() -> dict:
    """The option sets raced: XLA's defaults, YNNPACK off altogether, and research/xla.py's choice."""
    from research import xla

    return {"xla_default": {}, "ynnpack_off": {"xla_cpu_experimental_ynn_fusion_type": ""},
            "research": xla.CPU_MODES["eigen"]}


def race(build, ways, batch: int, repeats: int, base: str, ours: str = "research") -> dict:
    """`build(way)` -> (compiled, args, output) for each way, raced in turn; speedup and max relative difference of
    `ours` against `base`, comparing `output(result)`."""
    runners, outputs = {}, {}
    for way in ways:
        compiled, args, output = build(way)
        runners[way] = timing.Runner(lambda c=compiled, a=args: c(*a), extra={"hlo": models.hlo_counts(compiled)})
        outputs[way] = np.asarray(output(compiled(*args)))
    out = timing.race(runners, repeats, batch, None)
    return {**out, "speedup": round(out[base]["step_ms"] / out[ours]["step_ms"], 2),
            "max_rel_diff": relative_error(outputs[ours], outputs[base])}


def program(s, preset: str | None = None):
    """(jitted fn, its args, what of its output to compare): our forward, uint8 in, preprocessing included, or
    `preset`'s research.train step undecorated (no donation, so every variant can rerun the same state). The
    model is built and traced here, so a patched `layers` attribute takes effect."""
    from research.bundle import forward_body

    if preset:
        fn, state, inputs, _ = models.train_step(s, preset)
        return jax.jit(fn.__wrapped__), (state, *inputs), lambda o: o[1]["loss"]
    fn = jax.jit(forward_body(s.spec, (s.tap,), "float32", s.preprocessing))
    return fn, (jax.device_put(s.bundle.variables), s.images), lambda o: o[s.tap]


def describe(name: str, size: int, batch: int, preset: str | None) -> dict:
    return {"case": f"{name} {preset + ' step' if preset else 'forward'}", "image_size": size, "batch": batch}


def compiled_case(name: str, size: int, batch: int, repeats: int, preset: str | None = None) -> dict:
    """Our forward (or `preset`'s step) compiled with each of `variants()` and raced against XLA's defaults."""
    fn, args, output = program(models.setup(name, size, batch, "float32"), preset)
    options = variants()

    def build(way):
        return fn.lower(*args).compile(compiler_options=options[way]), args, output

    return {**describe(name, size, batch, preset), **race(build, options, batch, repeats, "xla_default")}


def ways_case(name: str, size: int, batch: int, repeats: int, attr: str, ways: dict, preset: str | None = None) -> dict:
    """Our forward (or `preset`'s train step) with research/xla.py's options, built and traced once per way with
    `layers.<attr>` swapped for it; the last way is research's own."""
    from unittest import mock

    from research import xla
    from research.models import layers

    s = models.setup(name, size, batch, "float32")

    def build(way):
        with mock.patch.object(layers, attr, ways[way]):  # looked up when the model is built and traced
            fn, args, output = program(s, preset)
            return fn.lower(*args).compile(compiler_options=xla.CPU_MODES["eigen"]), args, output

    base, ours = list(ways)
    return {**describe(name, size, batch, preset), **race(build, ways, batch, repeats, base, ours)}


def pool_case(name: str, size: int, batch: int, repeats: int) -> dict:
    """Max-pools as strided slices (ours) or as a `reduce_window`."""
    import flax.linen as nn
    from research.models import layers

    reduce_window = lambda x, w, st, padding=0: nn.max_pool(x, (w, w), (st, st), layers.pad(padding))  # noqa: E731
    return ways_case(name, size, batch, repeats, "max_pool", {"reduce_window": reduce_window,
                                                              "research": layers.max_pool})


def pointwise_case(name: str, size: int, batch: int, repeats: int, preset: str) -> dict:
    """1x1 convolutions as `lax.conv_general_dilated` or as research's matmul, the other convolutions as ours."""
    from research.models import layers, lowering

    ours = lowering.conv_general_dilated

    def lax_1x1(lhs, rhs, *args, **kwargs):
        return (lax.conv_general_dilated if rhs.shape[:2] == (1, 1) else ours)(lhs, rhs, *args, **kwargs)

    return ways_case(name, size, batch, repeats, "conv_general_dilated", {"lax": lax_1x1, "research": ours}, preset)


def grouped_case(what: str, shape: tuple, kernel: int, stride: int, groups: int, repeats: int) -> dict:
    """One grouped convolution as lax's and as research's: the forward, and its vjp (input and weight gradients,
    what a train step needs of it) raced apart."""
    from research.models.lowering import conv_general_dilated

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1] // groups, shape[-1])) / kernel, jnp.float32)
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    out = {"what": what, "shape": list(shape), "kernel": kernel, "stride": stride, "groups": groups}
    for part in ("forward", "input_grad", "weight_grad"):
        runners, results = {}, {}
        for way, conv in (("lax", lax.conv_general_dilated), ("research", conv_general_dilated)):
            f = lambda x, w, conv=conv: conv(x, w, (stride, stride), "SAME", dimension_numbers=numbers,  # noqa: E731
                                             feature_group_count=groups)
            g = jnp.ones(jax.eval_shape(f, x, w).shape, jnp.float32)
            fn = {"forward": f, "input_grad": lambda x, w, f=f: jax.vjp(lambda x: f(x, w), x)[1](g)[0],
                  "weight_grad": lambda x, w, f=f: jax.vjp(lambda w: f(x, w), w)[1](g)[0]}[part]
            compiled = jax.jit(fn).lower(x, w).compile(compiler_options=variants()["research"])
            runners[way] = timing.Runner(lambda c=compiled: c(x, w))
            results[way] = np.asarray(compiled(x, w))
        timed = timing.race(runners, repeats, shape[0], None)
        out[part] = {"lax_ms": timed["lax"]["step_ms"], "research_ms": timed["research"]["step_ms"],
                     "speedup": round(timed["lax"]["step_ms"] / timed["research"]["step_ms"], 2),
                     "max_rel_diff": relative_error(results["research"], results["lax"])}
    return out


def mobile_case(name: str, size: int, batch: int, repeats: int, preset: str | None) -> dict:
    """A mobile model's forward (or `preset`'s step) with its grouped convolutions as lax's or as research's."""
    from research.models import layers, lowering

    ours = lowering.conv_general_dilated

    def lax_grouped(lhs, rhs, *args, **kwargs):
        return (lax.conv_general_dilated if kwargs.get("feature_group_count", 1) > 1 else ours)(lhs, rhs, *args,
                                                                                                 **kwargs)

    return ways_case(name, size, batch, repeats, "conv_general_dilated", {"lax": lax_grouped, "research": ours},
                     preset)


def markdown(result: dict) -> str:
    lines = [f"## CPU lowering choices {result['date']}", "", f"`{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".", "",
             f"Load average at the start: {result['machine'].get('load_average_start')} (a shared machine: read the "
             "ratios, raced in one process)."
             + (f" Kept from earlier runs: {result['kept']}." if result.get("kept") else ""), "",
             "3x3 convolution, 512 -> 512 channels, batch 8, float32:", "",
             "| map | lax.conv_general_dilated ms | research ms | speedup | max rel diff |", "|---|---|---|---|---|"]
    lines += [f"| {c['map']} | {c['lax']['step_ms']:.2f} | {c['research']['step_ms']:.2f} | {c['speedup']}x "
              f"| {c['max_rel_diff']:.1e} |" for c in result.get("conv", [])]
    lines += ["", "Compiled with XLA's CPU defaults, with YNNPACK off altogether, and with research/xla.py's options "
              "(YNNPACK for reductions only), raced in turn:", "",
              "| case | px | batch | XLA default img/s | YNNPACK off img/s | research img/s | speedup over default "
              "| max rel diff |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {f['case']} | {f['image_size']} | {f['batch']} | {f['xla_default']['img_per_s']:.1f} "
              f"| {f['ynnpack_off']['img_per_s']:.1f} | {f['research']['img_per_s']:.1f} | {f['speedup']}x "
              f"| {f['max_rel_diff']:.1e} |" for f in result.get("compiled", [])]
    lines += ways_table("Max-pooling as a `reduce_window` against research's strided slices, research/xla.py's "
                        "options:", "reduce_window", result.get("pool", []))
    lines += ways_table("1x1 convolutions as `lax.conv_general_dilated` against research's matmul, research/xla.py's "
                        "options (HLO convolution counts show what each compiled):", "lax", result.get("pointwise", []))
    lines += ["", "Grouped convolutions, float32, SAME, research/xla.py's options: lax's grouped "
              "convolution against research's (shifted multiply-adds for depthwise; XLA's forward and input gradient "
              "with batched-matmul weight gradients for groups of several channels); ms per call:", "",
              "| conv | input | k | stride | groups | forward lax / ours | input grad lax / ours "
              "| weight grad lax / ours | max rel diff (fwd, dx, dw) |", "|---|---|---|---|---|---|---|---|---|"]
    parts = ("forward", "input_grad", "weight_grad")
    lines += [f"| {g['what']} | {'x'.join(map(str, g['shape']))} | {g['kernel']} | {g['stride']} | {g['groups']} | "
              + " | ".join(f"{g[p]['lax_ms']:.1f} / {g[p]['research_ms']:.1f} ({g[p]['speedup']}x)" for p in parts)
              + " | " + ", ".join(f"{g[p]['max_rel_diff']:.0e}" for p in parts) + " |" for g in result.get("grouped", [])]
    lines += ways_table("Mobile models with their grouped convolutions as lax's against research's, research/xla.py's "
                        "options:", "lax", result.get("mobile", []))
    return "\n".join(lines) + "\n"


def ways_table(title: str, first: str, cases: list) -> list:
    lines = ["", title, "", f"| case | px | batch | {first} img/s | research img/s | speedup | max rel diff "
             "| convolutions |", "|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {f['case']} | {f['image_size']} | {f['batch']} | {f[first]['img_per_s']:.1f} "
                    f"| {f['research']['img_per_s']:.1f} | {f['speedup']}x | {f['max_rel_diff']:.1e} "
                    f"| {f[first]['hlo']['convolution']} / {f['research']['hlo']['convolution']} |" for f in cases]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lowering", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 px only, 3 repeats")
    p.add_argument("--out", default=str(run.RESULTS / "cpu_lowering.json"))
    p.add_argument("--repeats", type=int, help="default 7, 3 with --quick")
    p.add_argument("--only", help="comma-separated sections to run (conv, compiled, pool, pointwise, grouped, "
                   "mobile); the others are kept from --out's existing result where it has them")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    sections = {
        "conv": lambda: [conv_case(size, repeats) for size in MAPS],
        "compiled": lambda: [compiled_case(*case, repeats) for case in (QUICK_FORWARDS if args.quick else FORWARDS)]
        + [compiled_case(*case, repeats, "top_block") for case in (QUICK_STEPS if args.quick else STEPS)],
        "pool": lambda: [pool_case(*case, repeats) for case in POOLS],
        "pointwise": lambda: [pointwise_case(*case[:3], repeats, case[3])
                              for case in (QUICK_POINTWISE if args.quick else POINTWISE)],
        "grouped": lambda: [grouped_case(*case, repeats) for case in (QUICK_GROUPED if args.quick else GROUPED)],
        "mobile": lambda: [mobile_case(*case[:3], repeats, case[3])
                           for case in (QUICK_MOBILE if args.quick else MOBILE)]}
    only = args.only.split(",") if args.only else list(sections)
    if set(only) - set(sections):
        p.error(f"--only takes {', '.join(sections)}")
    result = run.header("lowering", argv, ("jax", "jaxlib", "flax"))
    if args.only and Path(args.out).exists():  # keep the sections not rerun, saying from when
        old = json.loads(Path(args.out).read_text())
        result["kept"] = {k: old["date"] for k in sections if k not in only and k in old}
        result.update({k: old[k] for k in result["kept"]})
    for name in only:
        result[name] = sections[name]()
    run.write(result, Path(args.out), markdown)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
