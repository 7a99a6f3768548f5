"""Multi-label feature files ((N, C) labels, -1 ignored): the reader, and one-vs-rest probes end to end with
VOC 2007 mAP as the primary metric."""
from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from research import cli, probe
from research.errors import UserError
from research.probe import metrics, reader
from tests.test_probe_fixtures import write_feats

NAMES = ["person", "dog", "boat"]


def multilabel(n, seed, ignored=0.05):
    """Three labels, each present on the 30% of rows where its own direction of a 16-d Gaussian (plus noise) is
    largest; a fraction ignored. Without ignored entries every class has the same counts, so lbfgs's
    one-vs-rest fits share one compiled shape (each new shape compiles anew, ~10 s on CPU)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    signal = x[:, :3] + 0.5 * rng.normal(size=(n, 3))
    labels = (signal >= np.quantile(signal, 0.7, axis=0)).astype(np.int8)
    labels[rng.random((n, 3)) < ignored] = -1
    return x, labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multilabel")
    (x, y), (tx, ty) = multilabel(300, 0, ignored=0), multilabel(200, 1)
    return write_feats(tmp / "train.h5", x, y, NAMES), write_feats(tmp / "test.h5", tx, ty, NAMES), tmp


def test_reader(files):
    data = reader.read(files[1])
    assert data.multilabel and data.labels.shape == (200, 3) and set(np.unique(data.labels)) == {-1, 0, 1}


def test_bad_multilabel_refused(tmp_path):
    path = write_feats(tmp_path / "b.h5", np.zeros((4, 2), np.float32), np.full((4, 3), 2), NAMES)
    with pytest.raises(UserError, match="values 1, 0 or -1"):
        reader.read(path)


@pytest.mark.parametrize("method", ["lbfgs", "knn", "logreg"])
def test_one_vs_rest_end_to_end(files, method):
    train, test, tmp = files
    out = tmp / f"{method}.json"
    assert cli.main(["probe", str(train), "--test", str(test), "--method", method, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metric"] == "voc07_map" and result["metric_value"] == result["voc07_map"]
    assert result["voc07_map"] > 0.6 and result["mean_per_class_accuracy"] is None
    assert set(result["per_class"]) == set(NAMES) and all(0 <= v["ap"] <= 1 for v in result["per_class"].values())
    assert result["n_train"] == 300 and result["n_test"] == 200 and "confusion" not in result["files"]
    if method != "knn":  # the saved one-vs-rest model gives back the reported mAP
        model = joblib.load(result["files"]["model"])
        data = reader.read(test)
        mean, _ = metrics.voc07_map(model.decision_function(data.features["features"]), data.labels)
        assert mean == pytest.approx(result["voc07_map"])
        assert len(result["one_vs_rest"]) == 3


def test_held_out_fraction_and_metric_refused(files, capsys):
    train, _, tmp = files
    result = probe.run(files[1], method="knn", test_size=0.3, out=tmp / "held.json")
    assert result["n_test"] == 60 and result["test_source"]["kind"] == "held-out fraction"
    assert cli.main(["probe", str(train), "--method", "knn", "--metric", "mean_per_class_accuracy",
                     "--out", str(tmp / "x.json")]) == 2
    assert "multi-label" in capsys.readouterr().err
