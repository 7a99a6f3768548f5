"""`research augment-preview`: a valid PNG of the expected size, the same bytes for the same seed."""
from __future__ import annotations

from PIL import Image

from research.cli import main
from tests.test_data_fixtures import make_class_tree


def test_preview_png_size_and_determinism(tmp_path, capsys):
    root = make_class_tree(tmp_path / "d", {"a": 3, "b": 3})
    args = [str(root), "--n", "3", "--k", "2", "--image-size", "16", "--seed", "1", "--crop-scale", "0.5", "1"]
    assert main(["augment-preview", *args, "--out", str(tmp_path / "g.png")]) == 0
    with Image.open(tmp_path / "g.png") as image:
        assert image.format == "PNG" and image.size == (3 * 16, 3 * 16) and image.mode == "RGB"
    assert "-> " in capsys.readouterr().out
    assert main(["augment-preview", *args, "--out", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "g.png").read_bytes() == (tmp_path / "h.png").read_bytes()


def test_preview_bad_input_is_one_line(tmp_path, capsys):
    root = make_class_tree(tmp_path / "d", {"a": 1})
    (tmp_path / "g.png").write_bytes(b"")
    assert main(["augment-preview", str(root), "--out", str(tmp_path / "g.png")]) == 2
    assert main(["augment-preview", str(root), "--out", str(tmp_path / "x.png"), "--zoom", "1.5"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
