"""Every repro config runs end to end in smoke mode, offline: stand-in weights in the real file format, tiny
generated data, the same fine-tune or dump-and-probe path as the real run, and a report beside the result."""
from __future__ import annotations

import json

import jax
import pytest

from research import experiments
from research.experiments import reproduce


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Smoke runs of one family compile the same programs; a persistent cache keeps the file inside a minute
    or two on two cores. Restored afterwards."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for n, v in old.items():
        jax.config.update(n, v)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One smoke-weights cache for the module: the stand-in files are written once."""
    return tmp_path_factory.mktemp("cache") / "weights"


@pytest.mark.parametrize("name", experiments.names())
def test_smoke_run(name, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_keras"))  # smoke never looks for the real files
    workdir = tmp_path / name
    result = reproduce.run(name, smoke=True, workdir=workdir, cache_dir=cache, echo=lambda *_: None)
    exp = experiments.get(name)
    assert result["smoke"] and result["kind"] == exp.kind and 0.0 <= result["measured"] <= 1.0
    assert json.loads((workdir / "result.json").read_text()) == result
    report = (workdir / "report.md").read_text()
    assert exp.reported_text in report and f"{result['measured']:.1%}" in report and "Smoke run" in report
    assert result["weights"]["sha256"] and result["weights"]["sha256"] in report
    if exp.kind == "finetune":
        assert (workdir / "train" / "curves.png").is_file() and "train/curves.png" in report
        assert result["details"]["epochs"] == max(len(result["details"]["config"]["phases"]), 1)
