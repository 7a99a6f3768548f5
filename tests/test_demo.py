"""The README's main job: real ImageNet weights, a real image set, an HDF5 dump, a probe and a table."""
from __future__ import annotations

import h5py
import pytest

from research import demo
from research.cli import main


def test_demo_runs_the_real_pipeline_offline(tmp_path, capsys):
    table = demo.run(out=tmp_path / "demo", image_size=32, echo=lambda *_: None)
    with h5py.File(tmp_path / "demo" / "features.h5") as f:
        assert f["features"].shape == (1797, 1280) and f.attrs["complete"]
        assert f.attrs["arch"] == "efficientnet_lite0"
    accuracy = float(table.split("| test accuracy |")[1].split("|")[0])
    assert accuracy > 0.85  # the pipeline works end to end; the weights themselves are checked on real photos
    assert (tmp_path / "demo" / "report.md").read_text().strip() == table
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_sklearn_digits_source():
    from research import data
    source = data.open("sklearn:digits")
    assert len(source) == 1797 and source.class_names == tuple("0123456789")
    image = source.image(0)
    assert image.mode == "RGB" and image.size == (8, 8)
    with pytest.raises(Exception, match="unknown scikit-learn image set"):
        data.open("sklearn:faces")
