"""The XLA options research's jitted model functions compile with, in one place.

On CPU, jaxlib 0.10 hands convolutions, matmuls and reductions to YNNPACK fusions by default. On the 2-core AMD
EPYC we test and benchmark on, XLA's own Eigen convolutions are faster at 224 px, with the same results to
float32 rounding, while YNNPACK's reductions are 7-20x faster than XLA's loops (BatchNorm and bias gradients).
With YNNPACK kept for reductions only, ResNet-50's forward and its top-block step at 224 px run 1.1x faster than
with XLA's defaults, the step 1.2x faster than with YNNPACK off (benchmarks/results/cpu_lowering.md).
The price is paid on small inputs, where YNNPACK's matmuls win: at 64 px the ResNet-50 forward is 0.85x XLA's
defaults. Other backends are left as XLA sets them.
`RESEARCH_XLA_CPU=default` keeps XLA's choice, to re-measure on another CPU with `research bench --xla-cpu default`.
"""
from __future__ import annotations

import functools
import logging
import os

import jax

from research.errors import UserError

ENV = "RESEARCH_XLA_CPU"
# "eigen": YNNPACK for reductions only
CPU_MODES = {"eigen": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}, "default": {}}
log = logging.getLogger(__name__)


def cpu_mode() -> str:
    mode = os.environ.get(ENV, "eigen")
    if mode not in CPU_MODES:
        raise UserError(f"{ENV}={mode!r} is not one of {', '.join(CPU_MODES)}")
    return mode


def on_cpu() -> bool:
    """Whether functions traced now compile for XLA:CPU, for lowering choices made for it alone."""
    return jax.default_backend() == "cpu"


def options() -> dict | None:
    """`compiler_options` for jax.jit on the current default backend (None: XLA's defaults)."""
    if not on_cpu():
        return None
    wanted = CPU_MODES[cpu_mode()]
    return dict(wanted) if wanted and _accepted(tuple(wanted.items())) else None


@functools.cache
def _accepted(items: tuple) -> bool:
    """Whether this jaxlib knows the options: a newer one may rename them, and then XLA's defaults stand."""
    try:
        jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=dict(items))
        return True
    except Exception as e:  # XLA answers an unknown option with INVALID_ARGUMENT
        log.warning("XLA rejected %s (%s); using its defaults", dict(items), str(e).splitlines()[0])
        return False


def jit(fun=None, **kwargs):
    """`jax.jit` with `options()`; usable as a decorator, bare or with jit's keyword arguments."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return jax.jit(fun, compiler_options=options(), **kwargs)
