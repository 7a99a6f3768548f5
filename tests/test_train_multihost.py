"""Two local processes (one CPU device each, joined by jax.distributed) train to the params of one process with
two devices: each process feeds its shard of every global batch, and evaluation covers every record once."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.train_fixtures import make_dataset, make_weights

ROOT = Path(__file__).resolve().parents[1]

RUN = textwrap.dedent("""
    import json, sys, jax, numpy as np
    from tests.train_fixtures import tiny_config
    from research.train import checkpoint, finetune
    weights, data, workdir, out = sys.argv[1:]
    config = tiny_config(weights, data, epochs=1, **{"split.validation": 0.2, "optimizer.name": "sgd",
                                                     "learning_rate": 1e-3})
    summary = finetune(config, workdir, echo=lambda *_: None)
    params = jax.tree.leaves(checkpoint.restore_variables(workdir))  # orbax reads collectively
    if jax.process_index() == 0:
        np.savez(out, *params)
        print(json.dumps({"test": summary["test"]["count"], "devices": len(jax.devices()),
                          "val": summary["history"][0]["validation_accuracy"]}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args, env):
    return subprocess.Popen([sys.executable, "-c", RUN, *map(str, args)], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    return out


def test_two_processes_match_one_process_with_two_devices(tmp_path):
    weights, data = make_weights(tmp_path / "weights"), make_dataset(tmp_path / "data", per_class=11)
    port = free_port()
    cpu = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    hosts = [launch([weights, data, tmp_path / "multi", tmp_path / "multi.npz"],
                    {**cpu, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
                     "JAX_COORDINATOR_ADDRESS": f"localhost:{port}"}) for i in range(2)]
    single = launch([weights, data, tmp_path / "single", tmp_path / "single.npz"],
                    {**cpu, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    multi_out = [finish(p) for p in hosts][0]
    single_out = finish(single)
    multi, one = json.loads(multi_out.splitlines()[-1]), json.loads(single_out.splitlines()[-1])
    assert multi == one and one["devices"] == 2 and one["test"] == 9
    a, b = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-5)
