"""``unet-summarize DIR``: one table for a whole sweep, a table grouped over seeds, and a plot.

A sweep (``unet-train -m ...``) leaves one folder per job, ``multirun/<date>/<time>/<n>/``, each
with ``.hydra/overrides.yaml`` (what the job changed) and ``metrics.json`` (what it reached). This
module reads them back and writes, into the sweep folder:

- ``summary.csv``: one row per job: its overrides, best epoch, best monitored value and final metrics
  (and, when a job was resumed with ``unet-train ckpt=...``, a ``resumed`` column with what each resume
  changed, read from the job's ``resume_log.yaml``: the job keeps its original overrides and group);
- ``summary_grouped.csv``: one row per setting of the non-seed overrides, mean and sample standard
  deviation (``ddof=1``, what ``numpy.std(ddof=1)`` gives) of every metric over the seeds;
- ``summary.md``: both tables in Markdown (also printed on stdout by the CLI);
- ``summary.png``: the monitored metric per epoch for every job, read from its TensorBoard events.

:class:`SummarizeCallback` does the same at the end of every multirun (see ``configs/hydra/default.yaml``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from unet_train.cli import console_script
from unet_train.errors import DataError, UserError
from unet_train.safe_io import write_atomic, write_csv
from unet_train.trust import read_yaml

log = logging.getLogger(__name__)

SEED_KEY = "seed"
RESUMED = "resumed"
# Bookkeeping values of metrics.json shown after the metrics proper, in this order.
TRAILING = ("train/loss", "epochs", "steps", "time_s", "validation_s")


@dataclass
class Job:
    """What one job of a sweep changed and reached."""

    path: Path
    overrides: dict[str, str]
    monitor: str
    val_every: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    resumes: list[list[str]] = field(default_factory=list)  # the overrides of each resume, oldest first

    @property
    def resumed(self) -> str | None:
        """What the resumes changed (``; `` between resumes), None if never resumed."""
        if not self.resumes:
            return None
        return "; ".join(" ".join(overrides) or "(no overrides)" for overrides in self.resumes)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return bool(self.metrics)


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """``["model=attention", "seed=1"]`` -> ``{"model": "attention", "seed": "1"}`` (values as typed)."""
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        out[key.lstrip("+~")] = value if sep else ""
    return out


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, str(path))


def load_yaml(path: Path) -> Any:
    """A job's YAML file as a config: bounded and without anchors or aliases, as every file the tool reads."""
    return OmegaConf.create(read_yaml(path, str(path)))


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Read every job folder under ``sweep_dir`` (any folder holding ``.hydra/overrides.yaml``).

    Jobs that have not written ``metrics.json`` (running, failed) are kept, with no metrics.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a sweep folder such as multirun/<date>/<time>.")
    jobs = []
    for overrides_file in root.rglob(".hydra/overrides.yaml"):
        path = overrides_file.parent.parent
        overrides = parse_overrides(load_yaml(overrides_file))
        # The config the job last ran with: a resume may change the monitor; .hydra/ keeps the first.
        config_file = next(
            (f for f in (path / "resolved_config.yaml", path / ".hydra" / "config.yaml") if f.is_file()), None
        )
        config = load_yaml(config_file) if config_file is not None else OmegaConf.create()
        job = Job(
            path=path,
            overrides=overrides,
            monitor=str(OmegaConf.select(config, "monitor", default="val/dice")),
            val_every=int(OmegaConf.select(config, "trainer.val_every", default=1) or 1),
            resumes=read_resumes(path),
        )
        metrics_file = path / "metrics.json"
        if metrics_file.is_file():
            try:
                job.metrics = json.loads(metrics_file.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{metrics_file} is not valid JSON ({exc}); delete it or rerun that job.") from exc
        else:
            log.warning("%s has no metrics.json (still running or failed); its row is left empty", path)
        jobs.append(job)
    if not jobs:
        raise DataError(
            f"No job folders (with .hydra/overrides.yaml) under {root}; pass the folder of a sweep "
            "(unet-train -m ...), such as multirun/<date>/<time>."
        )
    return sorted(jobs, key=lambda job: _job_number(job.path))


def read_resumes(path: Path) -> list[list[str]]:
    """The overrides of each resume of the job in ``path`` (its ``resume_log.yaml``; none without one)."""
    log_file = path / "resume_log.yaml"
    if not log_file.is_file():
        return []
    try:
        entries = OmegaConf.to_container(load_yaml(log_file))
    except Exception as exc:  # a hand-edited or cut-short log must not hide the job's results
        log.warning("Could not read %s (%s); the job is listed without its resumes", log_file, exc)
        return []
    if not isinstance(entries, list):
        log.warning("%s is not a list of resumes; the job is listed without them", log_file)
        return []
    return [[str(o) for o in (entry or {}).get("overrides") or []] for entry in entries if isinstance(entry, dict)]


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys: list[str] = []
    for job in jobs:
        keys += [key for key in job.overrides if key not in keys]
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def common_overrides(jobs: Sequence[Job]) -> list[str]:
    """The overrides that every job shares, as ``key=value``."""
    varying = set(varying_keys(jobs))
    return [f"{k}={v}" for k, v in jobs[0].overrides.items() if k not in varying]


def metric_keys(jobs: Sequence[Job]) -> list[str]:
    """``best_epoch``, ``best/<monitor>``, the final metrics, then the bookkeeping values."""
    seen: list[str] = []
    for job in jobs:
        seen += [key for key, value in job.metrics.items() if key not in seen and isinstance(value, (int, float))]
    best = [key for key in seen if key.startswith("best/")]
    trailing = [key for key in TRAILING if key in seen]
    rest = [key for key in seen if key not in best and key not in trailing and key != "best_epoch"]
    return (["best_epoch"] if "best_epoch" in seen else []) + best + rest + trailing


def job_rows(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """The per-job table: ``job``, every override key, then every metric (None where missing)."""
    override_cols: list[str] = []
    for job in jobs:
        override_cols += [key for key in job.overrides if key not in override_cols]
    metrics = metric_keys(jobs)
    resumed = [RESUMED] if any(job.resumes for job in jobs) else []
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name}
        row.update({key: job.overrides.get(key) for key in override_cols})
        if resumed:
            row[RESUMED] = job.resumed
        row.update({key: job.metrics.get(key) for key in metrics})
        rows.append(row)
    return ["job", *override_cols, *resumed, *metrics], rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for a single value)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), std


def grouped_rows(jobs: Sequence[Job]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Jobs grouped by their non-seed varying overrides: ``n`` and mean/std of every metric over seeds.

    Returns the group columns, the metric names and one row per group; a row holds the group's
    override values, ``n`` (finished jobs), ``seeds``, and ``<metric>`` -> ``(mean, std)``.
    """
    done = [job for job in jobs if job.finished]
    group_cols = [key for key in varying_keys(jobs) if key != SEED_KEY]
    metrics = metric_keys(done)
    groups: dict[tuple, list[Job]] = {}
    for job in done:
        groups.setdefault(tuple(job.overrides.get(key) for key in group_cols), []).append(job)
    rows = []
    for values, members in groups.items():
        row: dict[str, Any] = dict(zip(group_cols, values))
        row["n"] = len(members)
        row["seeds"] = " ".join(str(job.overrides.get(SEED_KEY, "-")) for job in members)
        for key in metrics:
            present = [job.metrics[key] for job in members if job.metrics.get(key) is not None]
            row[key] = mean_std(present)
        rows.append(row)
    return group_cols, metrics, rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def jobs_markdown(jobs: Sequence[Job]) -> str:
    """The per-job table in Markdown; only the overrides that differ between jobs get a column."""
    _, rows = job_rows(jobs)
    resumed = [RESUMED] if any(job.resumes for job in jobs) else []
    columns = ["job", *varying_keys(jobs), *resumed, *metric_keys(jobs)]
    return _markdown(columns, [[_fmt(row.get(col)) for col in columns] for row in rows])


def grouped_markdown(jobs: Sequence[Job]) -> str:
    """The grouped table in Markdown: ``mean ± std`` over seeds."""
    group_cols, metrics, rows = grouped_rows(jobs)
    header = [*group_cols, "n", "seeds", *metrics]
    body = []
    for row in rows:
        cells = [_fmt(row[c]) for c in group_cols] + [str(row["n"]), row["seeds"]]
        for key in metrics:
            mean, std = row[key]
            cells.append(_fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}")
        body.append(cells)
    return _markdown(header, body)


def monitored_curve(job: Job) -> tuple[list[float], list[float]]:
    """Epochs and values of the job's monitored metric, from its TensorBoard events.

    The loop validates every ``trainer.val_every`` epochs and after the last one, so the i-th
    validation is epoch ``(i + 1) * val_every`` except the last, which is the run's final epoch.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = job.path / "tensorboard"
    if not logdir.is_dir():
        return [], []
    # size_guidance 0 keeps every scalar (the default samples down to 1000 per tag).
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    if job.monitor not in events.Tags().get("scalars", []):
        return [], []
    values = [event.value for event in events.Scalars(job.monitor)]
    epochs = [float((i + 1) * job.val_every) for i in range(len(values))]
    if epochs and job.metrics.get("epochs"):
        epochs[-1] = float(job.metrics["epochs"])
    return epochs, values


def plot_curves(jobs: Sequence[Job], path: Path) -> Path:
    """One line per job of its monitored metric per epoch; jobs of a group share a colour."""
    from matplotlib.figure import Figure  # a Figure without pyplot needs no display backend
    from matplotlib.ticker import MaxNLocator

    group_cols = [key for key in varying_keys(jobs) if key != SEED_KEY]
    colours: dict[tuple, str] = {}
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for job in jobs:
        epochs, values = monitored_curve(job)
        if not values:
            continue
        group = tuple(job.overrides.get(key) for key in group_cols)
        colour = colours.setdefault(group, f"C{len(colours) % 10}")
        label = " ".join(f"{k}={v}" for k, v in job.overrides.items() if k in group_cols or k == SEED_KEY)
        axes.plot(epochs, values, marker="o", markersize=3, color=colour, label=f"{job.name}: {label}".strip(": "))
    monitors = sorted({job.monitor for job in jobs})
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(", ".join(monitors))
    axes.set_title(f"{', '.join(monitors)} per epoch, {len(jobs)} jobs")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small", loc="best")
    write_atomic(path, lambda handle: figure.savefig(handle, dpi=120, format="png"))
    return path


def summarize(sweep_dir: str | Path, output_dir: str | Path | None = None, plot: bool = True) -> str:
    """Write ``summary.csv``, ``summary_grouped.csv``, ``summary.md`` (and ``summary.png``); return the Markdown."""
    jobs = find_jobs(sweep_dir)
    out = Path(output_dir) if output_dir is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)

    header, rows = job_rows(jobs)
    write_csv(out / "summary.csv", header, rows)
    group_cols, metrics, groups = grouped_rows(jobs)
    grouped_header = [*group_cols, "n", "seeds"] + [f"{key} {stat}" for key in metrics for stat in ("mean", "std")]
    flat = []
    for row in groups:
        flat_row = {key: row[key] for key in (*group_cols, "n", "seeds")}
        for key in metrics:
            flat_row[f"{key} mean"], flat_row[f"{key} std"] = row[key]
        flat.append(flat_row)
    write_csv(out / "summary_grouped.csv", grouped_header, flat)

    finished = sum(job.finished for job in jobs)
    common = common_overrides(jobs)
    text = [
        f"# Sweep {Path(sweep_dir).resolve()}",
        "",
        f"{len(jobs)} jobs ({finished} finished). Common overrides: {' '.join(common) if common else '(none)'}.",
        "",
        "## Jobs",
        "",
        jobs_markdown(jobs),
        "",
        "## Mean ± sample std (n - 1) over seeds",
        "",
        grouped_markdown(jobs),
        "",
    ]
    if plot:
        plot_curves(jobs, out / "summary.png")
        text += ["![monitored metric per epoch](summary.png)", ""]
    markdown = "\n".join(text)
    write_atomic(out / "summary.md", markdown)
    log.info("Sweep summary of %d jobs written to %s (summary.md, summary.csv, summary_grouped.csv)", len(jobs), out)
    return markdown


class SummarizeCallback(Callback):
    """Hydra callback: summarise the sweep folder when a multirun ends (configured in ``hydra/default.yaml``)."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            markdown = summarize(sweep_dir, plot=self.plot)
        except Exception as exc:  # the jobs' own results are safe on disk; a summary must not fail the sweep
            log.warning("Could not summarise the sweep in %s: %s (run unet-summarize %s)", sweep_dir, exc, sweep_dir)
            return
        # On stdout, like unet-eval's figures: the table is the answer to the sweep.
        sys.stdout.write(markdown + "\n")


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``unet-summarize``."""
    parser = argparse.ArgumentParser(
        prog="unet-summarize",
        description="Summarise a sweep folder (multirun/<date>/<time>) into CSV, Markdown and a PNG plot.",
    )
    parser.add_argument("sweep_dir", help="the folder of a sweep: multirun/<date>/<time>")
    parser.add_argument("--output", "-o", default=None, help="where to write the summary (default: the sweep folder)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its event reader narrates every file at INFO
    try:
        markdown = summarize(args.sweep_dir, args.output, plot=not args.no_plot)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
