"""`research probe` with scikit-learn's logistic regression, through the CLI: scores, files and refusals."""
from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from research import cli
from research.probe import logreg
from tests.test_probe_fixtures import digits, write_digits, write_feats

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One logreg probe of the digits features with the default output path, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("logreg")
    feats = write_digits(tmp / "digits.h5")
    assert cli.main(["probe", str(feats), "--seed", "0"]) == 0
    return feats, tmp / "digits.probe.json"


def test_digits_scores_and_fields(probed):
    _, out = probed
    result = json.loads(out.read_text())
    assert result["accuracy"] > 0.9
    assert result["method"] == "logreg" and result["standardize"] is False and result["seed"] == 0
    assert any(np.isclose(result["best_C"], c) for c in logreg.C_GRID)
    assert result["n_train"] + result["n_test"] == 1797 and abs(result["n_test"] - 0.25 * 1797) < 10
    assert result["test_source"]["kind"] == "held-out fraction" and result["test_source"]["test_size"] == 0.25
    assert set(result["per_class"]) == {f"digit {i}" for i in range(10)}
    assert {"precision", "recall", "f1-score", "support"} <= set(result["per_class"]["digit 7"])
    assert result["macro avg"]["f1-score"] > 0.9
    assert result["provenance"]["arch"] == "resnet50" and result["provenance"]["complete"] is True
    assert result["fit_time_s"] > 0


def test_png_and_model(probed):
    feats, out = probed
    png = out.with_name("digits.probe.confusion.png")
    assert png.read_bytes()[:8] == PNG
    model = joblib.load(out.with_name("digits.probe.model.joblib"))
    x, y, _ = digits()
    assert np.mean(model.predict(x) == y) > 0.9


def test_report_printed(tmp_path, capsys):
    x, y, names = digits()
    feats = write_feats(tmp_path / "small.h5", x[:400], y[:400], names)
    assert cli.main(["probe", str(feats), "--standardize", "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "precision" in printed and "digit 9" in printed and "macro avg" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["standardize"] is True
    assert "scaler" in joblib.load(tmp_path / "r.model.joblib").named_steps


def test_overwrite_refused_leaves_json(probed, capsys):
    feats, out = probed
    before = out.read_bytes()
    assert cli.main(["probe", str(feats)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and "\n" not in err
    assert out.read_bytes() == before


def test_mismatched_test_labels(tmp_path, capsys):
    x, y, names = digits()
    train = write_feats(tmp_path / "train.h5", x[:300], y[:300], names)
    test = write_feats(tmp_path / "test.h5", x[300:400], y[300:400], [n.upper() for n in names])
    assert cli.main(["probe", str(train), "--test", str(test)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: label_names differ") and "\n" not in err
    assert not (tmp_path / "train.probe.json").exists()


def test_test_file(tmp_path):
    x, y, names = digits()
    train = write_feats(tmp_path / "train.h5", x[:700], y[:700], names)
    test = write_feats(tmp_path / "test.h5", x[1200:], y[1200:], names, split="test")
    assert cli.main(["probe", str(train), "--test", str(test)]) == 0
    result = json.loads((tmp_path / "train.probe.json").read_text())
    assert result["n_train"] == 700 and result["n_test"] == 597 and result["accuracy"] > 0.85
    assert result["test_source"]["kind"] == "file" and result["test_source"]["provenance"]["split"] == "test"


def test_incomplete_refused(tmp_path, capsys):
    feats = write_digits(tmp_path / "d.h5", complete=False)
    assert cli.main(["probe", str(feats)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "incomplete" in err and "\n" not in err


def test_single_class_refused(tmp_path, capsys):
    feats = write_feats(tmp_path / "one.h5", np.ones((20, 3), np.float32), [1] * 20, ["a", "b"])
    assert cli.main(["probe", str(feats)]) == 2
    assert "single class" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--test-size", "1.5"], "--test-size"),
    (["--seed", "-1"], "--seed"),
])
def test_bad_flags(tmp_path, capsys, argv, message):
    feats = write_digits(tmp_path / "d.h5")
    assert cli.main(["probe", str(feats), *argv]) == 2
    assert message in capsys.readouterr().err
