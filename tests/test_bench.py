"""The benchmark runner on a tiny case, so the README table and benchmarks/gpu.sh can rely on its fields without a
long run; the ratio and target logic is checked on hand-made numbers."""
from __future__ import annotations

import json

import pytest

from benchmarks import report, run

TINY = ["--models", "resnet18:torchvision", "--image-size", "32", "--batch-size", "2", "--repeats", "1",
        "--no-keras"]


def test_smoke_writes_json_and_markdown_case_by_case(tmp_path, monkeypatch):
    """One tiny run: its JSON and Markdown fields; and each case saved as it ends (the GPU script runs under time
    limits), marked incomplete until the end."""
    saved = []
    original = run.write
    monkeypatch.setattr(run, "write", lambda result, out: (saved.append(json.loads(json.dumps(result, default=str))),
                                                          original(result, out)))
    out = tmp_path / "smoke.json"
    assert run.main([*TINY, "--cases", "a,d,b", "--out", str(out)]) == 0
    assert [list(s["models"]["resnet18:torchvision"]["cases"]) for s in saved] == [
        ["a"], ["a", "d"], ["a", "d", "b"], ["a", "d", "b"]]  # a first, then the order asked for; then the end
    assert [s["complete"] for s in saved] == [False, False, False, True]
    assert saved[-1]["params"]["xla_cpu"].startswith("eigen")
    result = json.loads(out.read_text())
    assert {"date", "command", "machine", "versions", "params", "peak", "models", "targets", "notes"} <= result.keys()
    assert {"cpu", "cores", "platform", "device_kind", "device_count", "load_average_start"} <= result["machine"].keys()
    assert {"jax", "jaxlib", "flax", "optax", "keras", "numpy", "python"} <= result["versions"].keys()
    assert result["command"].startswith("python -m benchmarks.run --models resnet18:torchvision")
    model = result["models"]["resnet18:torchvision"]
    assert set(model["cases"]) == {"a", "b", "d"}
    for case in model["cases"].values():
        assert case["img_per_s"] > 0 and case["compile_s"] >= 0 and case["repeats"] == 1
        assert case["gflops_per_step"] > 0 and 0 < case["mfu"]
    assert model["keras"] == {"absent": "peer off (--no-keras)"}
    assert model["cases"]["b"]["hlo"]["convolution"] == model["cases"]["a"]["hlo"]["convolution"]  # pruned
    assert {"b_cost", "d_cost"} <= model["ratios"].keys()
    assert [t["key"] for t in result["targets"]] == ["b_cost"]
    markdown = out.with_suffix(".md").read_text()
    assert "| a forward (pre_logits) |" in markdown and "(incomplete" not in markdown


def test_direct_check_converts_keras_weights_and_agrees(tmp_path):
    """benchmarks.direct: a Keras ResNet50's saved weights through research.load, both forwards compared."""
    pytest.importorskip("keras")
    from benchmarks import direct
    from research import parity

    out = tmp_path / "direct.json"
    result = direct.main(["--image-size", "32", "--batch-size", "2", "--repeats", "1", "--models", "resnet50",
                          "--out", str(out)])
    (case,) = result["cases"]
    assert case["tap"] == "pre_logits" and case["max_rel_diff"] < parity.FLOAT32
    assert set(case["ways"]) == {"research:features", "keras:predict", "keras:predict_on_batch", "keras:call"}
    assert case["ours_over_keras"] > 0 and json.loads(out.read_text())["cases"][0]["model"] == "resnet50"
    assert "| resnet50 | 32 | 2 |" in out.with_suffix(".md").read_text()


def test_existing_result_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert run.main([*TINY, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--cases", "a,z"], ["--batch-size", "vgg19=4"], ["--batch-size", "x"],
                                   ["--models", "nonet"], ["--out", "r.txt"]])
def test_bad_flags_are_user_errors(tmp_path, capsys, flags):
    assert run.main(["--out", str(tmp_path / "r.json"), *flags]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_targets_from_ratios():
    model = {"spec": {"arch": "resnet50"}, "cases": {"a": {"img_per_s": 100.0, "dtype": "float32"},
                                                     "b": {"img_per_s": 90.0}, "c": {"img_per_s": 50.0},
                                                     "f_pack": {"img_per_s": 95.0, "forward_img_per_s": 100.0}},
             "keras": {"a": {"predict_on_batch": {"img_per_s": 80.0}, "jit_stateless_call": {"img_per_s": 95.0}}}}
    model["ratios"] = report.ratios(model)
    assert model["ratios"]["a_vs_keras"] == pytest.approx(100 / 95, abs=1e-3)
    assert model["ratios"]["a_keras_way"] == "jit_stateless_call"
    result = {"models": {"resnet50": model}, "machine": {"backend": "gpu"}, "params": {"image_size": 224},
              "loader": {"epoch_ratio_jpeg_over_pack": 5.0}}
    verdicts = {t["key"]: t["pass"] for t in report.targets(result)}
    assert verdicts == {"a_vs_keras": False, "b_cost": True, "c_cost": False, "f_pack": True, "a": False,
                        "b": False, "c": False, "pack": True}


def test_cli_has_bench():
    from research.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--cases", "a", "--no-keras"])
    assert args.quick and args.cases == "a" and args.no_keras


def test_matmul_flops_are_counted_on_the_traced_program():
    import jax
    import jax.numpy as jnp
    from benchmarks import timing

    def net(w, x):
        y = jax.lax.conv_general_dilated(x, w["conv"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y.mean((1, 2)) @ w["dense"])

    w = {"conv": jnp.ones((3, 3, 4, 8)), "dense": jnp.ones((8, 5))}
    x = jnp.ones((2, 6, 6, 4))
    conv, dense = 2 * (2 * 6 * 6 * 8) * (3 * 3 * 4), 2 * 2 * 5 * 8
    assert timing.compile_aot(jax.jit(net), w, x)[2] == conv + dense
    # the gradient of the weights adds one weight-gradient product per layer, and the dense layer's input gradient
    assert timing.compile_aot(jax.jit(jax.grad(net)), w, x)[2] == 2 * conv + 3 * dense


def test_mobile_models_race_a_pytorch_peer(tmp_path):
    """EfficientNet-Lite0 against its own PyTorch source, timed in the same race; MobileNetV2's torchvision peer is
    absent where torchvision is (torch's CPU wheel), and the output says why."""
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path / "mobile.json"
    assert run.main(["--models", "efficientnet_lite0", "--image-size", "32", "--batch-size", "2", "--repeats", "1",
                     "--cases", "a,b", "--no-keras", "--out", str(out)]) == 0
    model = json.loads(out.read_text())["models"]["efficientnet_lite0"]
    assert model["torch"]["a"]["forward"]["img_per_s"] > 0 and model["torch"]["b"]["train_step"]["img_per_s"] > 0
    assert model["torch"]["b"]["train_step"]["trainable_params"] == 1280 * 17 + 17  # the head only, as ours
    assert model["preprocessing"] == "tflite" and model["ratios"]["a_vs_torch"] > 0
    assert "| PyTorch CPU img/s |" in out.with_suffix(".md").read_text()
    import importlib.util

    from benchmarks import models, torch_peer
    why = torch_peer.absent_reason(models.spec_of("mobilenet_v2"), "float32")
    assert why is None if importlib.util.find_spec("torchvision") else why.startswith("torchvision not importable")


def test_dump_cases_time_gpu_decoding_or_say_why_not(tmp_path, monkeypatch):
    """Case f's three inputs on a tiny model: the pack, the JPEGs, and the JPEGs with --decode gpu (nvImageCodec's
    CPU backend where it is installed; elsewhere, and on any machine without a GPU by default, absent with the
    one-line reason)."""
    from benchmarks import models, pipeline
    from research.data import gpu_decode, pack

    monkeypatch.delenv(gpu_decode.BACKEND_ENV, raising=False)
    import jax
    if jax.default_backend() != "gpu":
        assert "pip install -e '.[gpu-decode]'" in run.gpu_decode_absent()
    codec = gpu_decode.installed()
    if codec:
        monkeypatch.setenv(gpu_decode.BACKEND_ENV, "cpu")
    s = models.setup("resnet18:torchvision", 32, 2, "float32")
    folder, _ = pipeline.image_folder(tmp_path / "jpeg", 4)
    pack.write(folder, tmp_path / "p.h5", 32, progress=False)
    cases = run.dump_cases(s, {"image_size": 32, "repeats": 1, "dtype": "float32"},
                           {"jpeg": folder, "pack": tmp_path / "p.h5"},
                           tmp_path, models.forward(s))
    assert cases["f_pack"]["img_per_s"] > 0 and cases["f_jpeg"]["workers"] >= 1
    assert cases["f_pack"]["forward_dtype"] == "float32" and cases["f_pack"]["forward_img_per_s"] > 0
    if codec:
        assert cases["f_jpeg_gpu"]["img_per_s"] > 0 and cases["f_jpeg_gpu"]["decode_backend"] == "cpu"
    else:
        assert "gpu-decode" in cases["f_jpeg_gpu"]["absent"]
    model = {"spec": s.spec.to_dict(), "preprocessing": s.preprocessing, "image_size": 32, "batch": 2,
             "dtype": "float32", "cases": cases, "keras": {}}
    model["ratios"] = report.ratios(model)
    assert ("f_jpeg_gpu" in model["ratios"]) == codec
    assert "| f features.dump, jpeg_gpu" in "\n".join(report.model_table("m", model))
