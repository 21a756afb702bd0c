"""``channels_last: auto`` and ``precision: auto`` on a CPU: each phase's setting measured on this machine, cached.

Which memory layout (and whether bfloat16 autocast) is faster depends on the CPU: channels-last trains
10 % slower than NCHW on one 2-core AMD EPYC and 28 % faster on another machine, while making inference
faster on both (issue 29). So on a CPU ``auto`` times a few steps of the real model at the run's batch
and crop size in every candidate setting, interleaved, and keeps the fastest by median. The figures are
cached per machine and model shape (:class:`TuneCache`), so a setting is measured once. On CUDA ``auto``
keeps the GPU defaults (channels-last, bf16 where supported) without measuring.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_train.engine.runtime import PRECISIONS, Runtime, eval_mode, to_channels_last

log = logging.getLogger(__name__)

PHASE_UNITS = {"training": "step", "inference": "forward"}
CACHE_VERSION = 1
MAX_CACHE_BYTES = 1 << 20  # a larger file is not ours to read
MAX_ENTRIES = 256  # the oldest entries go first beyond this
# The process got less CPU time than this share of the wall time while timing: it shared the CPU with other
# processes (one thread alone gets about 1.0, more threads more), so the figures are not cached.
SHARED_CPU = 0.8


@dataclass(frozen=True)
class Setting:
    """One candidate: memory layout and precision (``32`` or ``bf16``)."""

    channels_last: bool
    precision: str

    @property
    def name(self) -> str:
        return f"{'channels_last' if self.channels_last else 'nchw'}/{self.precision}"


def candidates(runtime: Runtime, spatial_dims: int = 2) -> list[Setting]:
    """The settings ``runtime.auto`` leaves open, the others fixed at the runtime's own values.

    Both layouts are measured for images and volumes (channels-last is ``channels_last_3d`` on a 5-D batch: a 3D
    UNet's training step at base 8, 2 x 32 x 64 x 64, took 1.43 s against 2.17 s in NCDHW order on the 2-core
    AMD EPYC, one thread).
    """
    layouts = [runtime.channels_last]
    if "channels_last" in runtime.auto:
        layouts = [True, False]
    precisions = ["32", "bf16"] if "precision" in runtime.auto else [runtime.precision]
    return [Setting(layout, precision) for precision in precisions for layout in layouts]


def time_settings(
    steps: dict[Setting, Callable[[], object]],
    rounds: int = 3,
    budget_s: float = 30.0,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[Setting, float]:
    """Median seconds per call of each step: one untimed warm-up call each, then ``rounds`` interleaved rounds.

    Each round runs every step once in a rotated order, so a slow phase of a shared machine hits all of
    them. Fewer rounds (at least one) when the warm-up calls say ``rounds`` would take longer than ``budget_s``.
    """
    order = list(steps)
    warm = 0.0
    for setting in order:  # the first call allocates memory and picks kernels
        start = timer()
        steps[setting]()
        warm += timer() - start
    rounds = max(1, min(rounds, int(budget_s // warm) if warm > 0 else rounds))
    samples: dict[Setting, list[float]] = {setting: [] for setting in order}
    for r in range(rounds):
        shift = r % len(order)
        for setting in order[shift:] + order[:shift]:
            start = timer()
            steps[setting]()
            samples[setting].append(timer() - start)
    return {setting: statistics.median(times) for setting, times in samples.items()}


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), or the platform's processor string where /proc/cpuinfo is absent."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/unet-train/tuning.json`` (``~/.cache/unet-train/tuning.json`` without it)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "unet-train" / "tuning.json"


def cache_key(phase: str, what: dict[str, Any], shape: tuple[int, ...], settings: list[Setting]) -> str:
    """What a measurement depends on: the CPU, torch, the thread count, the model (and step), the batch shape."""
    parts = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "phase": phase,
        "what": what,
        "shape": list(shape),
        "settings": [s.name for s in settings],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class TuneCache:
    """Measured seconds per setting, by :func:`cache_key`, in one JSON file (data only: nothing in it is run).

    A file that cannot be read or parsed, or an entry of the wrong form, is ignored with a warning and
    replaced by the next write; writing is atomic (a temporary file renamed over the old one).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else cache_path()

    def _entries(self) -> dict[str, dict[str, Any]]:
        try:
            if self.path.stat().st_size > MAX_CACHE_BYTES:
                raise ValueError(f"larger than {MAX_CACHE_BYTES} bytes")
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                raise ValueError(f"not a version-{CACHE_VERSION} tuning cache")
            entries = data.get("entries")
            if not isinstance(entries, dict):
                raise ValueError("no entries")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("Ignoring the tuning cache %s (%s); it is measured again and rewritten.", self.path, exc)
            return {}
        return {key: entry for key, entry in entries.items() if _valid_entry(entry)}

    def get(self, key: str, load_now: float | None = None) -> dict[str, float] | None:
        """Seconds by setting name, or None when this key was not measured, or (``load_now``: the load average
        now) was measured on a machine much busier than now: its seconds are then too slow to plan with."""
        entry = self._entries().get(key)
        if entry is None:
            return None
        if load_now is not None and _busier_then(entry.get("about"), load_now):
            return None
        return dict(entry["seconds"])

    def put(self, key: str, seconds: dict[str, float], about: dict[str, Any]) -> None:
        """Store one measurement (``about``: readable context for a person looking at the file)."""
        entries = self._entries()
        entries[key] = {"seconds": seconds, "about": about, "time": time.time()}
        newest = sorted(entries.items(), key=lambda item: item[1]["time"])[-MAX_ENTRIES:]
        try:
            _write_atomic(self.path, json.dumps({"version": CACHE_VERSION, "entries": dict(newest)}, indent=1))
        except OSError as exc:  # a read-only home costs a measurement per run, nothing else
            log.warning("Could not write the tuning cache %s (%s); the setting is measured again next time.",
                        self.path, exc)  # fmt: skip


def _busier_then(about: Any, load_now: float) -> bool:
    """Whether a measurement's load average (``about["load"]``; none recorded counts as unknown, so measured
    again) was more than twice today's and more than one higher. A width-16 step timed while the machine ran
    other benchmarks read 13.7 s in the cache; reused on the idle machine, it gave a plan of 7 steps for a run
    that made 149 (issue 28's matrix)."""
    then = about.get("load") if isinstance(about, dict) else None
    if not isinstance(then, (int, float)) or isinstance(then, bool):
        return True
    return float(then) > max(2 * load_now, load_now + 1)


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), dict):
        return False
    if not isinstance(entry.get("time"), (int, float)):
        return False
    return all(isinstance(k, str) and type(v) in (int, float) and v > 0 for k, v in entry["seconds"].items())


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)  # replaces a link at ``path`` itself, never the file it points to
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a measurement without moving the Python, NumPy or torch random streams of the run."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def tune(
    runtime: Runtime,
    phase: str,
    make_step: Callable[[Runtime], Callable[[], object]],
    what: dict[str, Any],
    shape: tuple[int, ...],
    cache: TuneCache | None = None,
    timer: Callable[[], float] = time.perf_counter,
    load: Callable[[], float] = lambda: os.getloadavg()[0],
    cpu_clock: Callable[[], float] | None = None,
) -> tuple[Runtime, dict[str, float]]:
    """The runtime with the settings ``runtime.auto`` leaves open decided by measuring ``phase`` on this machine,
    and the seconds per call of each setting measured (by :attr:`Setting.name`; empty when nothing was open).

    ``make_step(runtime)`` builds one step of the phase in that runtime's layout and precision (on copies:
    a measurement must not change the run's model); ``what`` (the model and step as plain values) and
    ``shape`` (the input batch) make the cache key with the machine. ``load()`` is the load average, kept with a
    measurement: one made on a much busier machine than now is made again (:meth:`TuneCache.get`). ``cpu_clock``
    (``time.process_time`` with the real ``timer``; with another timer, None skips the check) is this process's CPU
    time: a measurement during which it got less than :data:`SHARED_CPU` of the wall time shared the CPU (runs
    started together read a low load average, a one-minute mean) and is used once but not cached. Three runs
    started at once on 2 cores timed a 2.5D step at 0.632 s in NCHW and 0.699 s channels-last and cached NCHW;
    alone, the same step took 0.338-0.388 s channels-last and 0.403-0.465 s in NCHW. Such a timing chooses by
    the median CPU seconds each call used (waiting for the CPU is not counted), and returns the wall seconds.
    """
    if not runtime.auto:
        return runtime, {}
    spatial_dims = len(shape) - 2
    settings = candidates(runtime, spatial_dims)
    if len(settings) == 1:
        return with_setting(runtime, settings[0]), {}
    cache = cache if cache is not None else TuneCache()
    key = cache_key(phase, what, shape, settings)
    seconds = cache.get(key, load_now=load())
    fresh = seconds is None or any(s.name not in seconds for s in settings)
    basis: dict[str, float] | None = None  # seconds the choice compares, where not the wall ``seconds``
    if fresh:
        log.info("Measuring %s on this CPU for %s (%s) ...", " and ".join(runtime.auto), phase,
                 ", ".join(s.name for s in settings))  # fmt: skip
        cpu = cpu_clock if cpu_clock is not None else time.process_time if timer is time.perf_counter else None
        used: dict[Setting, list[float]] = {s: [] for s in settings}  # CPU seconds of each call, warm-up first
        with preserved_rng():
            steps = {s: make_step(with_setting(runtime, s)) for s in settings}
            if cpu is not None:
                steps = {s: _charged(step, cpu, used[s]) for s, step in steps.items()}
            wall0, cpu0 = timer(), cpu() if cpu is not None else 0.0
            timed = time_settings(steps, timer=timer)
            wall = timer() - wall0
        seconds = {s.name: t for s, t in timed.items()}
        share = (cpu() - cpu0) / wall if cpu is not None and wall > 0 else None
        if share is not None and share < SHARED_CPU:
            log.info("The timing shared the CPU with other processes (this one got %.0f %% of a core): its choice "
                     "holds for this run and is not cached.", 100 * share)  # fmt: skip
            if all(len(calls) > 1 for calls in used.values()):
                # Waiting for the CPU lengthens whichever setting's call it falls on; the CPU seconds a call used do
                # not wait. Three runs started together timed a 2.5D step NCHW 0.634 s, channels-last 0.642 s (wall),
                # where alone channels-last took 0.34-0.39 s and NCHW 0.40-0.47 s; CPU seconds keep that order.
                basis = {s.name: statistics.median(calls[1:]) for s, calls in used.items()}
        else:
            about = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "phase": phase, "shape": list(shape), "load": round(load(), 2)}  # fmt: skip
            cache.put(key, seconds, about)
    assert seconds is not None
    compared = basis or seconds
    best = min(settings, key=lambda s: compared[s.name])
    threads = torch.get_num_threads()
    when = "in CPU seconds per call, measured now" if basis else "measured now" if fresh else "measured earlier"
    where = "the wall times shared the CPU" if basis else f"{threads} thread{'s' * (threads != 1)}; cache {cache.path}"
    for line in choice_lines(phase, best, settings, compared, when):
        log.info("%s (%s%s %s)", line, cpu_model(), ";" if basis else ",", where)
    return with_setting(runtime, best), seconds


def _charged(step: Callable[[], object], cpu: Callable[[], float], calls: list[float]) -> Callable[[], object]:
    """``step`` that appends the CPU seconds of each call to ``calls``."""

    def run() -> object:
        start = cpu()
        try:
            return step()
        finally:
            calls.append(cpu() - start)

    return run


def choice_lines(phase: str, best: Setting, settings: list[Setting], seconds: dict[str, float], when: str) -> list[str]:
    """One line per measured setting: the choice, its time and the alternative's (the other setting as chosen)."""
    unit = PHASE_UNITS.get(phase, "call")
    lines = []
    other_layout = Setting(not best.channels_last, best.precision)
    if other_layout in settings:
        lines.append(
            f"channels_last {'on' if best.channels_last else 'off'} for {phase}: {seconds[best.name]:.3g} s vs "
            f"{seconds[other_layout.name]:.3g} s per {unit} with it {'off' if best.channels_last else 'on'}, {when}"
        )
    flipped = "32" if best.precision == "bf16" else "bf16"
    other_precision = Setting(best.channels_last, flipped)
    if other_precision in settings:
        words = {"32": "float32", "bf16": "bfloat16"}
        lines.append(
            f"precision {words[best.precision]} for {phase}: {seconds[best.name]:.3g} s vs "
            f"{seconds[other_precision.name]:.3g} s per {unit} in {words[flipped]}, {when}"
        )
    return lines


def with_setting(runtime: Runtime, setting: Setting) -> Runtime:
    """``runtime`` in ``setting``'s layout and precision, nothing left to measure."""
    return replace(runtime, channels_last=setting.channels_last, autocast_dtype=PRECISIONS[setting.precision], auto=())


def agree(dist: Any, runtime: Runtime, chosen: Runtime) -> Runtime:
    """Rank 0's choice on every rank (``dist``: a :class:`~unet_train.engine.distributed.Distributed`): one process
    measures, and all train or predict in the same layout and precision."""
    channels_last, precision = dist.broadcast_object((chosen.channels_last, chosen.precision))
    return with_setting(runtime, Setting(channels_last, precision))


def forward_step(model: torch.nn.Module, runtime: Runtime, shape: tuple[int, ...]) -> Callable[[], object]:
    """An inference forward of ``model`` (a copy is made, in ``runtime``'s layout) on a random batch of ``shape``."""
    trial = copy.deepcopy(model)
    trial = to_channels_last(trial) if runtime.channels_last else trial
    images = runtime.to_device(torch.rand(shape), image=True)

    def run() -> object:
        with eval_mode(trial), runtime.autocast():
            return trial(images)

    return run
