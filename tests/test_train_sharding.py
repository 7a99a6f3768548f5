"""The train step on 8 (fake CPU) devices gives the one-device loss and params: the batch is split along the
mesh and BatchNorm still sees the global batch."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EIGHT_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from tests.test_train_step import LAST_BLOCK, batch, flat, setup
    assert len(jax.devices()) == 8
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        train, _, state, _ = setup(LAST_BLOCK, lr=1e-3, devices=devices, optimizer="sgd")
        losses = []
        for i in range(2):
            state, metrics = train(state, *batch(i, n=16), jax.random.key(0))
            losses.append(float(metrics["loss"]))
        results.append((losses, flat(state["params"]), flat(state["batch_stats"])))
    (l1, p1, s1), (l8, p8, s8) = results
    np.testing.assert_allclose(l1, l8, atol=1e-5)
    for path in p1:
        np.testing.assert_allclose(p1[path], p8[path], atol=1e-5, err_msg=path)
    for path in s1:
        np.testing.assert_allclose(s1[path], s8[path], atol=1e-5, rtol=1e-5, err_msg=path)
    print("ok", l1, l8)
""")


def test_eight_devices_match_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
