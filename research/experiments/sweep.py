"""`research sweep`: one fine-tune per cell of a grid over config fields, resumable, tabulated and plotted.

Why: "how deep should I unfreeze, at which learning rate" is answered by a grid, and a grid of fine-tunes
takes long enough to be interrupted. Each cell is an ordinary fine-tuning workdir named from the cell, so a
finished cell's summary.json is reused as it is and an interrupted one resumes through finetune's own
checkpoints. The table (CSV and markdown) and the plot are rebuilt from the summaries on every invocation:
they are views of the workdir, not results of their own.
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import re
import time
from pathlib import Path

from research.errors import UserError

CELL_FILE = "sweep_cell.json"  # wall time of the invocation that finished the cell
COLUMNS = ("test_accuracy", "best_validation_accuracy", "trainable_params", "wall_s", "status")


def parse_grid(items) -> dict[str, list]:
    """`FIELD=V1,V2,...` strings -> {field: [values]}; values are Python literals or plain strings."""
    from research.train.config import parse_value

    grid = {}
    for item in items:
        field, sep, values = item.partition("=")
        if not sep or not field or not values or field in grid:
            raise UserError(f"cannot read --grid {item!r}; write --grid FIELD=V1,V2 once per field")
        grid[field] = [parse_value(v) for v in values.split(",")]
    if not grid:
        raise UserError("a sweep needs at least one --grid FIELD=V1,V2")
    return grid


def cells(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def cell_name(cell: dict) -> str:
    """A folder name from the cell's fields and values, e.g. freeze=from-stage2__learning_rate=0.001."""
    return "__".join(f"{k}={re.sub(r'[^A-Za-z0-9._-]+', '-', str(v))}" for k, v in cell.items())


def cell_config(base, cell: dict):
    """The base config with the cell's fields set (type-checked); freeze needs a single-phase config."""
    from research.train import config as configs

    if "freeze" in cell and base.phases:
        raise UserError("the config has phases, whose own freeze rules would override the grid's; sweep a "
                        "single-phase config (or set --config.phases='()')")
    config = copy.deepcopy(base)
    for field, value in cell.items():
        configs.assign(config, field, value)
    configs.check(config)
    return config


def run(base, grid: dict[str, list], workdir, echo=print) -> list[dict]:
    """Runs every cell not yet finished, then writes sweep.csv, sweep.md and sweep.png; the rows."""
    workdir = Path(workdir)
    configs = [(cell, cell_config(base, cell)) for cell in cells(grid)]  # every cell checked before any runs
    rows = [_run_cell(cell, config, workdir / cell_name(cell), echo) for cell, config in configs]
    write_outputs(rows, grid, workdir)
    echo(table(rows, grid))
    return rows


def _run_cell(cell: dict, config, cell_dir: Path, echo) -> dict:
    from research import train
    from research.train import report

    summary_file = cell_dir / report.SUMMARY
    status = "reused"
    if not summary_file.is_file():
        echo(f"sweep: running {cell_dir.name}")
        start = time.time()
        summary = train.finetune(config, cell_dir, echo=echo)
        if "stopped" in summary:
            return {**cell, "status": "stopped", "workdir": str(cell_dir)}
        report.write_json(cell_dir / CELL_FILE, {"wall_s": round(time.time() - start, 1)})
        status = "ran"
    return _row(cell, json.loads(summary_file.read_text()), cell_dir, status)


def _row(cell: dict, summary: dict, cell_dir: Path, status: str) -> dict:
    timing = cell_dir / CELL_FILE
    wall = json.loads(timing.read_text())["wall_s"] if timing.is_file() else None
    return {**cell, "test_accuracy": summary.get("test", {}).get("accuracy"),
            "best_validation_accuracy": summary.get("best_validation_accuracy"),
            "trainable_params": summary["params"]["trainable"], "wall_s": wall, "status": status,
            "workdir": str(cell_dir)}


def table(rows: list[dict], grid: dict) -> str:
    """The markdown table: the cell's fields, then the results."""
    header = [*grid, *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell_text(k, row.get(k)) for k in header) + " |")
    return "\n".join(lines)


def _cell_text(column: str, value) -> str:
    """Accuracies to 4 places, seconds to 1, counts with separators, grid values as written."""
    if value is None:
        return "-"
    if column.endswith("accuracy"):
        return f"{value:.4f}"
    if column == "wall_s":
        return f"{value:.1f}"
    return f"{value:,}" if column == "trainable_params" else str(value)


def write_outputs(rows: list[dict], grid: dict, workdir: Path) -> None:
    from research.train import report

    workdir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [*grid, *COLUMNS, "workdir"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    report.atomic_write(workdir / "sweep.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    report.atomic_write(workdir / "sweep.md", lambda tmp: Path(tmp).write_text(table(rows, grid) + "\n"))
    plot(rows, grid, workdir / "sweep.png")


def plot(rows: list[dict], grid: dict, out: Path) -> None:
    """Accuracy against freeze depth: x is the freeze setting ordered by trainable params (else the first grid
    field), one line per combination of the other fields' values."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from research.train import report

    x_field = "freeze" if "freeze" in grid else next(iter(grid))
    done = [r for r in rows if r["status"] != "stopped"]
    metric = "test_accuracy" if any(r.get("test_accuracy") is not None for r in done) else "best_validation_accuracy"
    order = sorted(grid[x_field], key=lambda v: _mean([r["trainable_params"] for r in done if r[x_field] == v]))
    others = [f for f in grid if f != x_field]
    fig, ax = plt.subplots(figsize=(7, 4))
    for combo in itertools.product(*(grid[f] for f in others)):
        chosen = {f: v for f, v in zip(others, combo)}
        ys = [next((r[metric] for r in done if r[x_field] == x and all(r[f] == v for f, v in chosen.items())),
                   None) for x in order]
        label = ", ".join(f"{f}={v}" for f, v in chosen.items()) or metric
        ax.plot(range(len(order)), [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xticks(range(len(order)), [str(v) for v in order])
    ax.set_xlabel(f"{x_field} (by trainable params)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    report.atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _mean(values) -> float:
    return sum(values) / len(values) if values else float("inf")
