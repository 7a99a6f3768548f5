"""Layer-wise probing of a multi-tap file: one fit per tap, a table, `taps` in the JSON and a depth PNG."""
from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from research import cli
from tests.test_probe_fixtures import mixture, write_feats

PNG = b"\x89PNG\r\n\x1a\n"


def taps_file(path, taps_attr=True):
    """Three taps that get more separable with depth: noise added to a mixture, less of it deeper."""
    x, y, names = mixture(n=600, d=32, k=4, spread=0.6, seed=1)
    rng = np.random.default_rng(2)
    features = {name: (x + rng.normal(size=x.shape) * s).astype(np.float32)[:, :dim]
                for name, s, dim in (("block1", 3.0, 16), ("block2", 1.0, 24), ("block3", 0.0, 32))}
    return write_feats(path, features, y, names, paths=[f"p{i}" for i in range(len(y))], taps_attr=taps_attr)


@pytest.mark.parametrize("method", ["logreg", "lbfgs"])
def test_layerwise(tmp_path, capsys, method):
    feats = taps_file(tmp_path / "taps.h5")
    assert cli.main(["probe", str(feats), "--method", method, "--test-size", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert all(t in printed for t in ("block1", "block2", "block3")) and "accuracy" in printed
    result = json.loads((tmp_path / "taps.probe.json").read_text())
    rows = result["taps"]
    assert [r["tap"] for r in rows] == ["block1", "block2", "block3"]
    assert [r["dim"] for r in rows] == [16, 24, 32]
    assert rows[0]["accuracy"] < rows[2]["accuracy"] and rows[2]["accuracy"] > 0.8
    assert all({"best_C", "macro avg", "per_class", "n_train", "n_test"} <= set(r) for r in rows)
    assert result["best_tap"] == max(rows, key=lambda r: r["accuracy"])["tap"]
    assert result["accuracy"] == max(r["accuracy"] for r in rows)
    for name in ("taps.probe.depth.png", "taps.probe.confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    models = joblib.load(tmp_path / "taps.probe.model.joblib")
    assert set(models) == {"block1", "block2", "block3"}


def test_test_file_needs_the_taps(tmp_path, capsys):
    train = taps_file(tmp_path / "train.h5")
    x, y, names = mixture(n=100, d=16, k=4, spread=0.6)
    test = write_feats(tmp_path / "test.h5", {"block1": x}, y, names)
    assert cli.main(["probe", str(train), "--test", str(test)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no tap 'block2'" in err and "\n" not in err
