"""Keras DenseNet121/169/201: parity with Keras 3 at every tap, in every file style (tests/keras_files.py).

CI runs DenseNet121 with its top at 64 px and without at 72 px, whose odd 9x9 map at 1/8 makes the transitions'
average pool drop a row and a column; `-m full` runs every member at 224 px.
"""
from __future__ import annotations

import pytest

from research.models import densenet
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")


def keras_taps(arch: str) -> dict[str, str]:
    """Our tap -> Keras layer: a stage is a dense block, conv2..conv5 (research/models/densenet.py)."""
    blocks = densenet.BLOCKS[arch]
    return {"stem": "pool1", "top": "relu",
            **{f"stage{s}": f"conv{s + 1}_block{n}_concat" for s, n in enumerate(blocks, start=1)}}


def check(name: str, include_top: bool, size: int, styles, photos, tmp_path) -> None:
    arch = name.lower()
    keras_files.check_application(name, keras_taps(arch), "torch", resize(photos, size), tmp_path, styles,
                                  {"arch": arch, "preprocessing": "torch"}, include_top=include_top, seed=size)


@pytest.mark.parametrize("include_top,size,styles", [(True, 64, ("keras2_h5", "keras")),
                                                     (False, 72, ("weights.h5", "legacy_h5"))])
def test_densenet121_matches_keras(include_top, size, styles, photos, tmp_path):
    check("DenseNet121", include_top, size, styles, photos, tmp_path)


@pytest.mark.full
@pytest.mark.parametrize("name", ["DenseNet121", "DenseNet169", "DenseNet201"])
def test_every_member_at_224(name, photos, tmp_path):
    check(name, True, 224, ("keras2_h5", "weights.h5"), photos, tmp_path)


@pytest.mark.full  # ~4x ResNet50V2's compile time on 2 cores; tests/test_keras_resnet_v2.py runs the same in CI
def test_fresh_head_bf16_and_frozen_bn(photos, tmp_path):
    model = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(32, 32, 3))
    keras_files.randomize(model)
    keras_files.check_fresh_head(model, resize(photos, 32), tmp_path)
