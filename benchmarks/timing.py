"""How a case is timed, and what the machine could do at best, so every number in a result means the same thing.

A timing is: compile apart (ahead-of-time for our functions, first call minus the median for Keras), one warm-up
call, then `repeats` calls each blocked on its result; we report the median and the min/max.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from importlib import metadata

import jax
import jax.extend
import jax.numpy as jnp


@dataclasses.dataclass
class Timing:
    times: list
    compile_s: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def record(self, batch: int, flops: float | None = None, peak: float | None = None) -> dict:
        """JSON fields: img/s at the median and at the slowest/fastest repeat, and utilisation of `peak`."""
        out = {"img_per_s": round(batch / self.median, 2), "img_per_s_min": round(batch / max(self.times), 2),
               "img_per_s_max": round(batch / min(self.times), 2), "step_ms": round(1e3 * self.median, 3),
               "repeats": len(self.times), "compile_s": None if self.compile_s is None else round(self.compile_s, 2)}
        if flops:
            out["gflops_per_step"] = round(flops / 1e9, 3)
            out["tflop_per_s"] = round(flops / self.median / 1e12, 4)
            if peak:
                out["mfu"] = round(flops / self.median / peak, 4)
        return out


@dataclasses.dataclass
class Runner:
    """One contender in a case: `call()` returns what to block on. Ours is compiled ahead of time
    (`compile_s`, `flops` known); a Keras API compiles on its first call, timed as `first_s`."""
    call: object
    compile_s: float | None = None
    flops: float | None = None
    first_s: float | None = None
    extra: dict = dataclasses.field(default_factory=dict)


def race(runners: dict, repeats: int, batch: int, peak: float | None) -> dict:
    """{name: record}, the runners timed in turn within each repeat (the order rotating), so that load from
    other processes on a shared machine falls on all of them alike."""
    names = list(runners)
    for name in names:
        jax.block_until_ready(runners[name].call())  # warm-up
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(runners[name].call())
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, runner in runners.items():
        compile_s = runner.compile_s
        if compile_s is None and runner.first_s is not None:
            compile_s = max(0.0, runner.first_s - statistics.median(times[name]))
        out[name] = {**Timing(times[name], compile_s).record(batch, runner.flops, peak), **runner.extra}
    return out


def repeat(call, repeats: int, warmup: int = 1) -> list:
    """Seconds per call after `warmup` calls; `call()` returns what to block on."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def first_call(call) -> float:
    """Seconds of one call, blocked: for APIs that compile on first use."""
    start = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - start


def compile_aot(jitted, *args):
    """(executable, compile seconds, convolution and matmul FLOPs per call)."""
    traced = jitted.trace(*args)
    start = time.perf_counter()
    compiled = traced.lower().compile()
    seconds = time.perf_counter() - start
    return compiled, seconds, matmul_flops(traced.jaxpr.jaxpr) or None


def matmul_flops(jaxpr) -> float:
    """FLOPs of the convolutions and matrix products in a jaxpr (2 per multiply-add), sub-jaxprs included: the
    work MFU is measured by. Counted before XLA sees the program because XLA's cost analysis is per backend (on a
    GPU the convolutions become cuDNN calls that it does not count, and the CUDA plugin does not answer at all)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        out, name = eqn.outvars[0].aval, eqn.primitive.name
        if name == "conv_general_dilated":
            kernel, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
            total += 2 * math.prod(out.shape) * math.prod(kernel[d] for d in spec[1:])
        elif name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            total += 2 * math.prod(out.shape) * math.prod(eqn.invars[0].aval.shape[d] for d in contracting)
        for sub in _subjaxprs(eqn.params):
            total += matmul_flops(sub) * eqn.params.get("length", 1)  # a scan runs its body `length` times
    return total


def _subjaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def matmul_peak(dtype: str, size: int, repeats: int) -> dict:
    """FLOP/s of one large square `jnp.dot` on the default device: the ceiling MFU is measured against. Timed
    under XLA's default options and under research/xla.py's, and the faster taken, so that no model case can
    beat its ceiling by running a different matmul kernel."""
    from research import xla

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
    runs = {}
    for name, jit in (("xla_default", jax.jit), ("research", xla.jit)):
        compiled, compile_s, _ = compile_aot(jit(jnp.dot), a, b)
        runs[name] = (repeat(lambda c=compiled: c(a, b), repeats), compile_s)
    name, (times, compile_s) = min(runs.items(), key=lambda kv: min(kv[1][0]))
    best = min(times)
    return {"dtype": dtype, "size": size, "tflop_per_s": round(2 * size**3 / best / 1e12, 4),
            "median_tflop_per_s": round(2 * size**3 / statistics.median(times) / 1e12, 4),
            "flop_per_s": 2 * size**3 / best, "compile_s": round(compile_s, 2), "options": name}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def machine() -> dict:
    devices = jax.devices()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_model() or platform.machine(), "cores": os.cpu_count(), "platform": platform.platform(),
            "backend": jax.default_backend(), "device_kind": devices[0].device_kind, "device_count": len(devices),
            "load_average_start": [round(x, 2) for x in load] if load else None}


def versions(names=("research", "jax", "jaxlib", "flax", "optax", "keras", "numpy", "scikit-learn")) -> dict:
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # e.g. research run from a checkout on PYTHONPATH
            out[name] = getattr(sys.modules.get(name.replace("-", "_")), "__version__", None)
    return out
