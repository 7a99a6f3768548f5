"""Keras ResNet50V2/101V2/152V2: parity with Keras 3 at every tap, in every file style (tests/keras_files.py).

CI runs ResNet50V2 with its top at 64 px and without at 72 px, whose odd 9x9 map at 1/8 makes the strided
blocks' max-pool shortcut and padded 3x3 conv round up; `-m full` runs every member at 224 px.
"""
from __future__ import annotations

import pytest

from research.models import resnet_v2
from tests import keras_files
from tests.conftest import resize

keras = pytest.importorskip("keras")


def keras_taps(arch: str) -> dict[str, str]:
    """Our tap -> Keras layer: a stage ends at the block before the next strided one (research/models/resnet_v2)."""
    stacks = resnet_v2.KERAS_STACKS[arch]
    taps = {"stem": "pool1_pool", "top": "post_relu", "stage4": f"conv5_block{stacks[3]}_out"}
    taps.update({f"stage{g - 1}": f"conv{g}_block{stacks[g - 2] - 1}_out" for g in (2, 3, 4)})
    return taps


def check(name: str, arch: str, include_top: bool, size: int, styles, photos, tmp_path) -> None:
    keras_files.check_application(name, keras_taps(arch), "tf", resize(photos, size), tmp_path, styles,
                                  {"arch": arch, "preprocessing": "tf"}, include_top=include_top, seed=size)


@pytest.mark.parametrize("include_top,size,styles", [(True, 64, ("weights.h5", "keras")),
                                                     (False, 72, ("keras2_h5", "legacy_h5"))])
def test_resnet50_v2_matches_keras(include_top, size, styles, photos, tmp_path):
    check("ResNet50V2", "resnet50_v2", include_top, size, styles, photos, tmp_path)


@pytest.mark.full
@pytest.mark.parametrize("name", ["ResNet50V2", "ResNet101V2", "ResNet152V2"])
def test_every_member_at_224(name, photos, tmp_path):
    check(name, name.lower().replace("v2", "_v2"), True, 224, ("keras2_h5", "weights.h5"), photos, tmp_path)


def test_fresh_head_bf16_and_frozen_bn(photos, tmp_path):
    model = keras.applications.ResNet50V2(weights=None, include_top=False, input_shape=(32, 32, 3))
    keras_files.randomize(model)
    keras_files.check_fresh_head(model, resize(photos, 32), tmp_path)
