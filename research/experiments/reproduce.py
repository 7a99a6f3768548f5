"""`research reproduce NAME`: run one published experiment and set the measured number beside the reported one.

Why this shape: every input is resolved before any work (weights via `research.weights.fetch` or --weights,
the dataset via `research.data.open` or --data), so an offline run with something missing stops at once with
one line naming all of it. The work itself is the project's ordinary path, `train.finetune` or
`features.dump` + `probe.run`, so a reproduction tests the code users run. `--smoke` swaps in stand-in weights
of the same file format and a tiny generated data set (`research.experiments.smoke`) and runs that same path.
The workdir gets `result.json` and `report.md` last, atomically; a finished workdir is kept unless --overwrite.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import time
from pathlib import Path

import ml_collections

from research import experiments, resources
from research.errors import UserError

DEFAULT_ROOT = Path("runs/repro")
MARKER = "repro.json"  # written first: what this workdir is running
RESULT = "result.json"
REPORT = "report.md"
# What every smoke fine-tune changes; an experiment's `smoke.overrides` come on top.
SMOKE_FIELDS = {"image_size": 32, "batch_size": 4, "epochs": 1, "workers": 2, "log_every": 1,
                "eval_batch_size": 0}
SMOKE_PROBE = {"image_size": 32, "batch_size": 8}


@dataclasses.dataclass
class Inputs:
    """The resolved weights and data, and what the run substituted (smoke)."""
    weights: Path
    data: str
    smoke: bool
    notes: list


def default_workdir(name: str, smoke: bool = False) -> Path:
    return DEFAULT_ROOT / "smoke" / name if smoke else DEFAULT_ROOT / name


def run(name: str, smoke: bool = False, offline: bool = False, weights=None, data=None, workdir=None,
        overwrite: bool = False, cache_dir=None, echo=print) -> dict:
    """Runs the experiment into `workdir` (default runs/repro/NAME, smoke runs/repro/smoke/NAME); the result."""
    exp = experiments.get(name)
    workdir = Path(workdir) if workdir else default_workdir(name, smoke)
    _check_workdir(workdir, overwrite)
    inputs = resolve(exp, smoke, offline, weights, data, workdir, cache_dir)
    _claim(workdir, exp, inputs, overwrite)
    echo(f"reproduce {name}: {exp.kind} of {inputs.weights.name} on {inputs.data}"
         + (" (smoke: stand-in weights and data)" if smoke else ""))
    start = time.time()
    measured = _finetune(exp, inputs, workdir, echo) if exp.kind == "finetune" else _probe(exp, inputs, workdir, echo)
    result = _result(exp, inputs, measured, time.time() - start)
    _write_outputs(workdir, exp, result)
    echo(f"{exp.metric.replace('_', ' ')}: reported {exp.reported_text}, measured {_pct(result['measured'])} "
         f"-> {workdir / REPORT}")
    return result


# --- inputs -------------------------------------------------------------------------------------------------------

def resolve(exp, smoke: bool, offline: bool, weights, data, workdir: Path, cache_dir=None) -> Inputs:
    """Every input checked up front; all that is missing in one UserError."""
    from research.experiments import smoke as stand_in
    from research.weights import fetch

    if smoke:
        cache = Path(cache_dir or fetch.default_cache()).parent / "smoke"
        path = stand_in.weights(exp.smoke.weights, cache)
        spec = str(stand_in.dataset(workdir / "smoke_data", split_tree=exp.smoke.split_tree,
                                    validation=exp.smoke.get("validation", False)))
        return Inputs(path, spec, True, [f"stand-in weights {path.name} (random values, or the bundled "
                                         f"EfficientNet-Lite0), tiny generated data, 32 px, 1 epoch per phase"])
    problems = []
    path = _weights(exp, weights, offline, cache_dir, problems)
    spec = _data(exp, data, offline, problems)
    if problems:
        raise UserError(f"{exp.name} cannot start: " + "; ".join(problems))
    if path is None:  # known, not cached, and we may download: only now that the data is known to be there
        path = fetch.fetch(exp.weights, cache_dir)
    return Inputs(Path(path), spec, False, [])


def _weights(exp, given, offline: bool, cache_dir, problems: list) -> Path | None:
    from research.weights import fetch

    if given:
        if not Path(given).exists():
            problems.append(f"weights {given}: no such file")
        return Path(given)
    found = fetch.find(exp.weights, cache_dir)
    if found is None and offline:
        where = fetch.candidates(exp.weights, cache_dir)
        problems.append(f"weights {exp.weights} (put it in {where[0].parent}/ or {where[1].parent}/, "
                        f"or pass --weights)")
    return found


def _data(exp, given, offline: bool, problems: list) -> str:
    """Opens the dataset (listing only); offline, a TFDS dataset not yet prepared is named, never downloaded."""
    from research import data as datasets

    spec = given or exp.data
    if not spec:
        problems.append(f"dataset: pass --data with {exp.data_note}")
        return ""
    if offline and spec.startswith("tfds:") and not _tfds_prepared(spec, problems):
        return spec
    try:
        datasets.open(spec)
    except UserError as e:
        problems.append(f"dataset {spec}: {e}")
    return spec


def _tfds_prepared(spec: str, problems: list) -> bool:
    from research.data.tfds import parse_spec

    name, _ = parse_spec(spec)
    try:
        import tensorflow_datasets as tfds
        builder = tfds.builder(name)
    except Exception as e:  # not installed, unknown name: one line either way
        problems.append(f"dataset {spec}: {(str(e).splitlines() or [type(e).__name__])[0]}")
        return False
    if not builder.is_prepared():
        problems.append(f"dataset {spec} is not prepared in {builder.data_dir} (`tfds build {name} "
                        f"--file_format=array_record` where there is network, or pass --data)")
        return False
    return True


# --- the workdir --------------------------------------------------------------------------------------------------

def _check_workdir(workdir: Path, overwrite: bool) -> None:
    if (workdir / RESULT).is_file() and not overwrite:
        raise UserError(f"{workdir} holds a finished reproduction ({workdir / REPORT}); pass --overwrite to run "
                        f"it again")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        raise UserError(f"{workdir} exists and is not a reproduction workdir; use another --workdir")


def _claim(workdir: Path, exp, inputs: Inputs, overwrite: bool) -> None:
    """Records the run; a workdir left by another run of other inputs is refused unless --overwrite."""
    from research.train import report

    claim = {"name": exp.name, "smoke": inputs.smoke, "weights": str(inputs.weights), "data": inputs.data}
    marker = workdir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) != claim:
        if not overwrite:
            raise UserError(f"{workdir} holds an unfinished run with other inputs; pass --overwrite to restart")
    if marker.is_file() and overwrite:
        keep = workdir / "smoke_data"  # made by this run's resolve, not a result
        for child in workdir.iterdir():
            if child != keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    report.write_json(marker, claim)


# --- the two kinds --------------------------------------------------------------------------------------------------

def finetune_config(exp, inputs: Inputs) -> ml_collections.ConfigDict:
    """The experiment's fine-tuning config file, its overrides, the inputs, and (smoke) the smoke fields."""
    from research import train
    from research.train import config as configs

    config = train.load_config(resources.shipped_config(exp.finetune.config))
    fields = {**exp.finetune.overrides.to_dict(), "weights": str(inputs.weights), "data": inputs.data}
    if inputs.smoke:
        fields.update({**SMOKE_FIELDS, **exp.smoke.overrides.to_dict()})
    for key, value in fields.items():
        _set(config, key, value)
    if inputs.smoke:
        config.phases = tuple({**phase, "epochs": 1} for phase in config.phases)
    configs.check(config)
    return config


def _set(config, key: str, value) -> None:
    """`augment` is replaced whole (an empty dict turns it off); every other field goes through the type checks."""
    from research.train import config as configs

    if key == "augment":
        config.augment = ml_collections.ConfigDict(dict(value))
    else:
        configs.assign(config, key, value)


def _finetune(exp, inputs: Inputs, workdir: Path, echo) -> dict:
    from research import train

    train_dir = workdir / "train"
    summary = train.finetune(finetune_config(exp, inputs), train_dir, echo=echo)
    if "stopped" in summary:
        raise UserError(f"{exp.name}: the fine-tune stopped early ({summary['stopped']}); run the command again")
    meta = json.loads((train_dir / "research.json").read_text())
    test = summary.get("test", {}).get("accuracy")
    history = summary["history"]
    validation = summary.get("best_validation_accuracy")
    if validation is None:
        validation = history[-1].get("validation_accuracy")
    split = meta["finetune"]["split"]
    per_class = _mean_per_class(summary.get("test", {}).get("report"))
    value = {"test_accuracy": test, "validation_accuracy": validation,
             "test_mean_per_class_accuracy": per_class}[exp.metric]
    return {"test_accuracy": test, "validation_accuracy": validation, "test_mean_per_class_accuracy": per_class,
            "value": value,
            "weights_source": meta.get("source") or {},
            "split": {k: len(v) for k, v in split.items() if isinstance(v, list)},
            "curves": "train/curves.png" if (train_dir / "curves.png").is_file() else None,
            "params": summary["params"], "config": summary["config"], "epochs": len(history)}


def _mean_per_class(table: dict | None) -> float | None:
    """Mean per-class accuracy from a test classification report: recall averaged over the classes with test
    images (as `research.probe.metrics.mean_per_class_accuracy`)."""
    if not table:
        return None
    recalls = [v["recall"] for k, v in table.items() if isinstance(v, dict) and k not in (
        "macro avg", "weighted avg", "micro avg") and v.get("support", 0) > 0]
    return float(sum(recalls) / len(recalls)) if recalls else None


def _probe(exp, inputs: Inputs, workdir: Path, echo) -> dict:
    from research import data as datasets
    from research import probe

    p = exp.probe
    size, batch = (SMOKE_PROBE["image_size"], SMOKE_PROBE["batch_size"]) if inputs.smoke else (p.image_size,
                                                                                               p.batch_size)
    source = datasets.open(inputs.data)
    given = p.split == "given" and source.split is not None
    present = set(source.split_names() or ()) if given else set()
    parts = [s for s in ("train", "validation", "test") if s in present] if given else [None]
    files = {part: _dump(inputs, p, workdir, part, size, batch, echo) for part in parts}
    if given and not {"train", "test"} <= present:
        raise UserError(f"{inputs.data}: the protocol needs given train and test splits; it has "
                        f"{', '.join(sorted(present))}")
    metric = exp.metric.removeprefix("test_")
    result = probe.run(files["train"] if given else files[None], test=files.get("test"),
                       validation=files.get("validation"), test_size=p.test_size, method=p.method, metric=metric,
                       out=workdir / "probe.json", overwrite=True)
    validation = result["test_source"].get("validation")
    split = ({"given": "/".join(parts), "train": result["n_train"], "test": result["n_test"],
              "validation": validation["n"] if validation else f"{result.get('n_validation')} carved from train"}
             if given else {"random": f"{p.test_size:.0%} stratified, seed 0", "train": result["n_train"],
                            "test": result["n_test"]})
    source_meta = {"file": inputs.weights.name, "sha256": _sha256(inputs.weights)}
    return {"test_accuracy": result["accuracy"], exp.metric: result["metric_value"], "value": result["metric_value"],
            "weights_source": source_meta, "split": split, "curves": None,
            "config": {**p.to_dict(), "image_size": size, "batch_size": batch},
            "probe": {k: result.get(k) for k in ("method", "metric", "metric_value", "accuracy",
                                                 "mean_per_class_accuracy", "best_C", "best_l2", "macro_f1",
                                                 "n_train", "n_validation", "n_test")}}


def _dump(inputs: Inputs, p, workdir: Path, part, size: int, batch: int, echo) -> Path:
    """One feature file; a complete one from an earlier, interrupted run is reused (dump resumes partials)."""
    from research import features

    out = workdir / (f"features_{part}.h5" if part else "features.h5")
    if not out.is_file():
        echo(features.dump(inputs.weights, inputs.data, [p.tap], out, pool=p.pool, image_size=size,
                           resize=p.resize, batch_size=batch, buffer_size=max(batch, 1000), split=part).summary())
    return out


def _sha256(path: Path) -> str:
    from research import weights
    if path.is_file():
        return weights.sha256(path)
    return json.loads((path / weights.store.META_FILE).read_text()).get("source", {}).get("sha256", "")


# --- outputs ------------------------------------------------------------------------------------------------------

def _result(exp, inputs: Inputs, measured: dict, seconds: float) -> dict:
    return {"name": exp.name, "kind": exp.kind, "metric": exp.metric, "reported": exp.reported,
            "reported_text": exp.reported_text, "measured": measured.pop("value"), "smoke": inputs.smoke,
            "notes": inputs.notes, "source": exp.source,
            "weights": {"path": str(inputs.weights), **measured.pop("weights_source")},
            "data": {"spec": inputs.data, "split": measured.pop("split")}, "wall_s": round(seconds, 1),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "details": measured}


def _write_outputs(workdir: Path, exp, result: dict) -> None:
    from research.train import report

    report.write_json(workdir / RESULT, result)
    report.atomic_write(workdir / REPORT, lambda tmp: Path(tmp).write_text(render(exp, result)))


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render(exp, result: dict) -> str:
    """report.md: reported vs measured, provenance, the config, the curves, the wall time."""
    w, d, details = result["weights"], result["data"], result["details"]
    lines = [f"# {exp.name}", "", " ".join(exp.doc.split("\n\n")[0].split()), ""]
    if result["smoke"]:
        lines += ["**Smoke run**: " + "; ".join(result["notes"]) + ". The number checks the path, not the paper.",
                  ""]
    lines += ["| metric | reported | measured |", "|---|---|---|",
              f"| {exp.metric.replace('_', ' ')} | {exp.reported_text} | {_pct(result['measured'])} |", "",
              f"Source: {exp.source}.", "", "## Provenance", "",
              f"- weights: `{w.get('file', Path(w['path']).name)}` sha256 `{w.get('sha256', '')}` ({w['path']})",
              f"- data: `{d['spec']}`; split {json.dumps(d['split'])}",
              f"- wall time: {result['wall_s']:.0f} s; finished {result['finished']}", ""]
    if details.get("curves"):
        lines += ["## Curves", "", f"![training curves]({details['curves']})", ""]
    config = {"experiment": {k: v for k, v in exp.to_dict().items() if k != "doc"}, "run": details.get("config")}
    lines += ["## Config", "", "```json", json.dumps(config, indent=1, sort_keys=True, default=list), "```", ""]
    return "\n".join(lines)


def listing(root: Path = DEFAULT_ROOT) -> str:
    """The table `research reproduce --list` prints: every experiment, and its last measured result."""
    rows = [("name", "kind", "dataset", "reported", "last measured")]
    for name in experiments.names():
        exp = experiments.get(name)
        result_file = root / name / RESULT
        last = "-"
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            last = f"{_pct(result['measured'])} ({result['finished'][:10]})"
        rows.append((name, exp.kind, exp.data or f"--data ({exp.dataset})",
                     f"{exp.reported_text} {exp.metric.split('_')[0]}", last))
    rows.append(_grid_row(root))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _grid_row(root: Path) -> tuple:
    """The kornblith2019 grid's line: how many of its cells the last join found done."""
    from research.experiments import kornblith2019 as grid

    table = root / grid.NAME / "table.csv"
    last = "-"
    if table.is_file():
        rows = table.read_text().splitlines()[1:]
        done = sum(",done," in r for r in rows)
        last = f"{done}/{len(rows)} cells"
    return (grid.NAME, "grid", f"{len(grid.ARCHS)} networks x {len(grid.DATASETS)} datasets",
            "R50 row + r", last)
