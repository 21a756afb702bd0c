"""channels_last/precision=auto on a CPU (issue 29): the choice with a fake clock, the cache, the overrides, the log."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import tifffile
import torch

from unet_train.engine import autotune, runtime
from unet_train.engine.autotune import Setting, TuneCache, time_settings, tune
from unet_train.engine.fit import fit
from unet_train.engine.run import build_run
from unet_train.engine.runtime import make_runtime
from unet_train.errors import ConfigError
from unet_train.predict import run_predict

from ..conftest import TINY, compose_config

SHAPE = (4, 1, 64, 64)
WHAT = {"model": "UNet(base 4)"}


class FakeClock:
    """A timer that moves only when a step runs: each step costs what its setting is given."""

    def __init__(self) -> None:
        self.now = 0.0
        self.built: list[Setting] = []

    def __call__(self) -> float:
        return self.now

    def steps(self, costs: dict[Setting, float]):
        """A ``make_step`` whose steps cost ``costs[setting]`` seconds on this clock (the first call 10x: warm-up)."""

        def make_step(rt):
            setting = Setting(rt.channels_last, rt.precision)
            self.built.append(setting)
            calls = [0]

            def step() -> None:
                calls[0] += 1
                self.now += costs[setting] * (10 if calls[0] == 1 else 1)

            return step

        return make_step


@pytest.fixture
def cache(tmp_path) -> TuneCache:
    return TuneCache(tmp_path / "unet-train" / "tuning.json")


@pytest.fixture
def cpu(monkeypatch):
    """A CPU of a known name, with or without native bf16."""
    monkeypatch.setattr(autotune, "cpu_model", lambda: "Test CPU 9000")

    def with_bf16(native: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: native)

    with_bf16(False)
    return with_bf16


CL32, NCHW32, CL16, NCHW16 = (Setting(cl, p) for p in ("32", "bf16") for cl in (True, False))


def test_time_settings_takes_the_median_of_interleaved_rounds_after_a_warm_up():
    clock, order = FakeClock(), []
    costs = {CL32: [9.0, 1.0, 5.0, 2.0], NCHW32: [9.0, 3.0, 1.0, 4.0]}  # warm-up, then three rounds

    def step(setting: Setting):
        def run() -> None:
            order.append(setting)
            clock.now += costs[setting][sum(s == setting for s in order) - 1]

        return run

    medians = time_settings({CL32: step(CL32), NCHW32: step(NCHW32)}, rounds=3, budget_s=100, timer=clock)
    assert medians == {CL32: 2.0, NCHW32: 3.0}
    # Each round starts with the next setting, so neither always runs first.
    assert order == [CL32, NCHW32, CL32, NCHW32, NCHW32, CL32, CL32, NCHW32]
    # A warm-up that says the rounds would overrun the budget: one round only.
    clock2 = FakeClock()
    slow = time_settings({CL32: clock2.steps({CL32: 2.0})(make_runtime("cpu", "32", True))}, budget_s=25, timer=clock2)
    assert slow == {CL32: 2.0} and clock2.now == 20.0 + 2.0


@pytest.mark.parametrize(("cl_cost", "nchw_cost", "chosen"), [(0.41, 0.37, False), (0.30, 0.45, True)])
def test_each_layout_can_win(cpu, cache, cl_cost, nchw_cost, chosen):
    clock = FakeClock()
    rt = make_runtime("cpu", "32", "auto")
    assert rt.auto == ("channels_last",)
    tuned, seconds = tune(rt, "training", clock.steps({CL32: cl_cost, NCHW32: nchw_cost}), WHAT, SHAPE, cache, clock)
    assert tuned.channels_last is chosen and tuned.precision == "32" and tuned.auto == ()
    assert seconds == pytest.approx({"channels_last/32": cl_cost, "nchw/32": nchw_cost})


@pytest.mark.parametrize(("bf16_cost", "chosen"), [(0.2, "bf16"), (0.6, "32")])
def test_bf16_only_where_it_measures_faster(cpu, cache, bf16_cost, chosen):
    cpu(True)
    clock = FakeClock()
    rt = make_runtime("cpu", "auto", "auto")
    assert rt.auto == ("channels_last", "precision")
    costs = {CL32: 0.5, NCHW32: 0.4, CL16: bf16_cost, NCHW16: bf16_cost + 0.1}
    tuned, _ = tune(rt, "training", clock.steps(costs), WHAT, SHAPE, cache, clock)
    assert (tuned.precision, tuned.channels_last) == ((chosen, True) if chosen == "bf16" else (chosen, False))
    assert tuned.autocast_dtype is (torch.bfloat16 if chosen == "bf16" else None)
    # Without native bf16 it is emulated and never faster: float32 without measuring bf16.
    cpu(False)
    assert make_runtime("cpu", "auto", "auto").auto == ("channels_last",)
    assert make_runtime("cpu", "auto", "auto").precision == "32"


def test_measured_once_then_reused_until_the_shape_model_or_torch_changes(cpu, cache, monkeypatch):
    clock = FakeClock()
    make_step = clock.steps({CL32: 0.3, NCHW32: 0.2})
    rt = make_runtime("cpu", "32", "auto")
    first, _ = tune(rt, "training", make_step, WHAT, SHAPE, cache, clock)
    assert len(clock.built) == 2
    again, seconds = tune(rt, "training", make_step, WHAT, SHAPE, cache, clock)
    assert len(clock.built) == 2 and again == first
    assert seconds == pytest.approx({"channels_last/32": 0.3, "nchw/32": 0.2})
    tune(rt, "training", make_step, WHAT, (8, 1, 64, 64), cache, clock)  # another batch
    assert len(clock.built) == 4
    tune(rt, "training", make_step, {"model": "UNet(base 8)"}, SHAPE, cache, clock)  # another model
    assert len(clock.built) == 6
    tune(rt, "inference", make_step, WHAT, SHAPE, cache, clock)  # another phase
    assert len(clock.built) == 8
    monkeypatch.setattr(torch, "__version__", "99.0")
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock)
    assert len(clock.built) == 10
    entries = json.loads(cache.path.read_text())["entries"]
    assert len(entries) == 5
    assert {e["about"]["phase"] for e in entries.values()} == {"training", "inference"}


def test_a_measurement_from_a_much_busier_machine_is_made_again(cpu, cache):
    """A step timed at load 8 is too slow to plan with at load 1 (more than twice and more than one higher): measured
    again and replaced; at load 5 it is still reused, and an entry from before loads were kept is measured again."""
    clock = FakeClock()
    make_step = clock.steps({CL32: 0.3, NCHW32: 0.2})
    rt = make_runtime("cpu", "32", "auto")
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, load=lambda: 8.0)
    assert len(clock.built) == 2
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, load=lambda: 5.0)  # 8 <= max(2 * 5, 5 + 1)
    assert len(clock.built) == 2
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, load=lambda: 1.0)  # 8 > max(2, 2): again
    assert len(clock.built) == 4
    (entry,) = json.loads(cache.path.read_text())["entries"].values()
    assert entry["about"]["load"] == 1.0
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, load=lambda: 0.2)  # 1.0 <= max(0.4, 1.2): reused
    assert len(clock.built) == 4
    del entry["about"]["load"]
    key = next(iter(json.loads(cache.path.read_text())["entries"]))
    assert cache.get(key) is not None and cache.get(key, load_now=3.0) is not None
    cache.put(key, entry["seconds"], entry["about"])  # an entry without a load: unknown, so measured again
    assert cache.get(key, load_now=3.0) is None and cache.get(key) == entry["seconds"]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"version": 1, "entries": []}',
        '{"version": 1, "entries": {"K": {"seconds": {"nchw/32": "__import__(\'os\').system(\'x\')"}, "time": 1}}}',
        "\x00\xff",
    ],
)
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(cpu, cache, caplog, content):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(content, errors="surrogateescape")
    clock = FakeClock()
    with caplog.at_level(logging.WARNING):
        tuned, _ = tune(make_runtime("cpu", "32", "auto"), "training", clock.steps({CL32: 0.3, NCHW32: 0.2}), WHAT,
                        SHAPE, cache, clock)  # fmt: skip
    assert tuned.channels_last is False and len(clock.built) == 2
    if content.startswith('{"version": 1, "entries": {'):  # a bad entry is dropped quietly, the file kept
        assert "K" not in json.loads(cache.path.read_text())["entries"]
    else:
        assert f"Ignoring the tuning cache {cache.path}" in caplog.text
    assert len(json.loads(cache.path.read_text())["entries"]) == 1


@pytest.mark.parametrize("value", [True, False])
def test_true_and_false_skip_the_measurement(cpu, cache, value):
    clock = FakeClock()
    rt = make_runtime("cpu", "32", value)
    assert rt.auto == () and rt.channels_last is value
    tuned, seconds = tune(rt, "training", clock.steps({}), WHAT, SHAPE, cache, clock)
    assert tuned is rt and seconds == {} and clock.built == [] and not cache.path.exists()


def test_a_bad_value_is_one_config_error():
    with pytest.raises(ConfigError) as info:
        make_runtime("cpu", "32", "maybe")
    assert str(info.value) == "trainer.channels_last='maybe' is not known; choose auto, true or false."


def test_the_log_lines_give_the_choice_and_both_timings(cpu, cache, caplog):
    cpu(True)
    clock = FakeClock()
    costs = {CL32: 0.41, NCHW32: 0.37, CL16: 0.5, NCHW16: 0.45}
    threads = torch.get_num_threads()
    where = f"(Test CPU 9000, {threads} thread{'s' * (threads != 1)}; cache {cache.path})"
    with caplog.at_level(logging.INFO, logger="unet_train.engine.autotune"):
        tune(make_runtime("cpu", "auto", "auto"), "training", clock.steps(costs), WHAT, SHAPE, cache, clock)
        tune(make_runtime("cpu", "auto", "auto"), "training", clock.steps(costs), WHAT, SHAPE, cache, clock)
    lines = [r.getMessage() for r in caplog.records if "for training:" in r.getMessage()]
    assert lines == [
        f"channels_last off for training: 0.37 s vs 0.41 s per step with it on, measured now {where}",
        f"precision float32 for training: 0.37 s vs 0.45 s per step in bfloat16, measured now {where}",
        f"channels_last off for training: 0.37 s vs 0.41 s per step with it on, measured earlier {where}",
        f"precision float32 for training: 0.37 s vs 0.45 s per step in bfloat16, measured earlier {where}",
    ]


def test_a_3d_batch_is_measured_in_both_layouts(cpu, cache):
    """Volumes are timed in NCDHW and channels_last_3d (it was NCDHW only, 1.5x slower for a 3D UNet here)."""
    clock = FakeClock()
    tuned, seconds = tune(
        make_runtime("cpu", "32", "auto"),
        "training",
        clock.steps({CL32: 1.4, NCHW32: 2.2}),
        WHAT,
        (2, 1, 8, 8, 8),
        cache,
        clock,
    )
    assert tuned.channels_last is True and seconds == pytest.approx({"channels_last/32": 1.4, "nchw/32": 2.2})


def test_on_a_gpu_auto_is_channels_last_without_measuring(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    rt = make_runtime("cuda", "auto", "auto")
    assert rt.channels_last is True and rt.precision == "bf16" and rt.auto == ()


def test_preserved_rng_leaves_every_random_stream_where_it_was():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with autotune.preserved_rng():
        random.random(), np.random.rand(), torch.rand(5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


AUTO = [t for t in TINY if not t.startswith("trainer.channels_last")] + ["trainer.max_epochs=1"]


def test_a_run_measures_its_own_step_once_and_its_random_streams_do_not_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = compose_config(AUTO)
    assert cfg.trainer.channels_last == "auto"
    states = []
    for _ in range(2):  # measured, then from the cache
        with caplog.at_level(logging.INFO, logger="unet_train.engine.autotune"):
            run = build_run(cfg)
        assert run.runtime.auto == () and isinstance(run.runtime.channels_last, bool)
        # a weight whose layouts differ (one input channel or a 1x1 kernel is contiguous either way)
        layout = next(p for p in run.model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
        assert layout.is_contiguous(memory_format=torch.channels_last) is run.runtime.channels_last
        states.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert states[0] == states[1]
    assert caplog.text.count("for training:") == 2
    assert "measured now" in caplog.text and "measured earlier" in caplog.text
    entries = json.loads((tmp_path / "cache" / "unet-train" / "tuning.json").read_text())["entries"]
    (entry,) = entries.values()
    assert entry["about"]["shape"] == [int(cfg.data.batch_size), 1, 32, 32]
    assert set(entry["seconds"]) == {"channels_last/32", "nchw/32"}


@pytest.mark.slow
def test_predict_measures_the_inference_forward(tmp_path, monkeypatch, caplog):
    fit(compose_config(TINY), tmp_path / "run")
    tifffile.imwrite(tmp_path / "image.tif", np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = compose_config(
        [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'best.pt'}", f"input={tmp_path / 'image.tif'}",
         f"output={tmp_path / 'out'}", "tile_size=32", "batch_size=2", "progress=never"],
        config_name="predict",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="unet_train.engine.autotune"):
        run_predict(cfg)
    assert "for inference:" in caplog.text and "per forward" in caplog.text
    (entry,) = json.loads((tmp_path / "cache" / "unet-train" / "tuning.json").read_text())["entries"].values()
    assert entry["about"] | {"cpu": None, "load": None} == {
        "cpu": None, "torch": torch.__version__, "threads": torch.get_num_threads(), "phase": "inference",
        "shape": [2, 1, 32, 32], "load": None,
    }  # fmt: skip
    assert entry["about"]["load"] >= 0  # the load average it was measured at


def test_an_unwritable_cache_costs_a_warning_not_the_run(cpu, tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    cache = TuneCache(blocker / "unet-train" / "tuning.json")
    clock = FakeClock()
    with caplog.at_level(logging.WARNING):
        tuned, _ = tune(make_runtime("cpu", "32", "auto"), "training", clock.steps({CL32: 0.2, NCHW32: 0.3}), WHAT,
                        SHAPE, cache, clock)  # fmt: skip
    assert tuned.channels_last is True
    assert f"Could not write the tuning cache {cache.path}" in caplog.text


def test_a_resume_goes_on_in_the_setting_its_checkpoint_trained_in(tmp_path, cpu, monkeypatch, caplog):
    """channels_last and precision auto, resumed where the tuning cache is gone (another node, a cleared home, another
    thread count) and the other setting now measures faster: the run goes on as it trained, not measured again, so
    it repeats the uninterrupted run. A setting typed on the command line is the user's."""
    cpu(True)

    def favour(setting: Setting) -> None:
        monkeypatch.setattr(autotune, "time_settings", lambda steps, **kw: {s: 1.0 + (s != setting) for s in steps})

    auto = [*TINY, "trainer.precision=auto", "trainer.channels_last=auto", "trainer.max_epochs=1"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    favour(NCHW16)
    fit(compose_config(auto), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["runtime"] == {"precision": "bf16", "channels_last": False}

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other_cache"))
    favour(CL32)
    with caplog.at_level(logging.INFO, logger="unet_train.engine.trial"):
        run = build_run(compose_config([*auto, "trainer.max_epochs=2", f"ckpt={last}"]))
    assert (run.runtime.precision, run.runtime.channels_last, run.runtime.auto) == ("bf16", False, ())
    assert (
        "channels_last off, precision bfloat16 for training, as the resumed run trained "
        "(trainer.channels_last/trainer.precision=auto: not measured again; set a value to change it)"
    ) in caplog.text
    assert not (tmp_path / "other_cache" / "unet-train" / "tuning.json").exists()  # nothing measured

    run = build_run(compose_config([*auto, "trainer.max_epochs=2", "trainer.precision=32", f"ckpt={last}"]))
    assert (run.runtime.precision, run.runtime.channels_last) == ("32", False)


def test_tensorboard_hparams_give_the_precision_a_run_trained_in(tmp_path, cpu, monkeypatch):
    """precision=auto is decided per model shape: the HParams tab of a sweep tells its runs apart by the precision
    each trained in, not by the word auto they share."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    cpu(True)

    def faster_bf16(steps, **kw):
        return {s: 1.0 + (s.precision != "bf16") for s in steps}

    monkeypatch.setattr(autotune, "time_settings", faster_bf16)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fit(compose_config([*TINY, "trainer.precision=auto", "trainer.max_epochs=1"]), tmp_path / "run")
    stored = {}
    for events in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    stored = {k: v.string_value for k, v in data.session_start_info.hparams.items()}
    assert stored["trainer.precision"] == "bf16"


def test_a_deterministic_run_measures_nothing_and_says_what_it_takes(cpu, caplog):
    """Two deterministic runs must not train in different settings because two measurements differed."""
    with caplog.at_level(logging.INFO, logger="unet_train.engine.runtime"):
        rt = make_runtime("cpu", "auto", "auto", deterministic=True)
    assert (rt.auto, rt.channels_last, rt.precision) == ((), True, "32")
    assert "trainer.deterministic=true: no layout or precision measurement" in caplog.text
    fixed = make_runtime("cpu", "bf16", False, deterministic=True)
    assert (fixed.auto, fixed.channels_last, fixed.precision) == ((), False, "bf16")


def test_a_timing_that_shared_the_cpu_chooses_by_the_cpu_seconds_of_each_call(cpu, cache, caplog):
    """Waiting for the CPU lengthens whichever call it falls on: here channels-last waits 0.4 s a call and NCHW
    none, so NCHW is faster on the wall clock (0.5 s against 0.6 s) while channels-last uses less CPU (0.2 s
    against 0.5 s): the CPU seconds decide, and the wall seconds are still what the caller gets."""
    clock, used = FakeClock(), [0.0]
    own = {CL32: 0.2, NCHW32: 0.5}  # CPU seconds a call uses
    make_wall = clock.steps({CL32: 0.5, NCHW32: 0.5})

    def make_step(rt):
        setting, wall_step = Setting(rt.channels_last, rt.precision), make_wall(rt)

        def step() -> None:
            wall_step()
            used[0] += own[setting]
            clock.now += 0.1 if setting == CL32 else 0.0  # channels-last: 0.6 s a call on the wall

        return step

    rt = make_runtime("cpu", "32", "auto")
    with caplog.at_level("INFO", logger="unet_train.engine.autotune"):
        tuned, seconds = tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, cpu_clock=lambda: used[0])
    assert tuned.channels_last is True and not cache.path.exists()
    assert seconds == {"channels_last/32": pytest.approx(0.6), "nchw/32": pytest.approx(0.5)}
    assert (
        "channels_last on for training: 0.2 s vs 0.5 s per step with it off, in CPU seconds per call, measured now "
        "(Test CPU 9000; the wall times shared the CPU)" in caplog.text
    )


def test_a_timing_that_shared_the_cpu_is_used_once_and_not_cached(cpu, cache, caplog):
    """Runs started together read a low load average, but each got only part of a core while timing: its figures
    decide this run and are measured again by the next; a timing with the whole core is cached."""
    clock = FakeClock()
    make_step = clock.steps({CL32: 0.3, NCHW32: 0.2})
    rt = make_runtime("cpu", "32", "auto")
    with caplog.at_level("INFO", logger="unet_train.engine.autotune"):
        tuned, _ = tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, cpu_clock=lambda: clock.now * 0.6)
    assert tuned.channels_last is False and not cache.path.exists()
    assert "this one got 60 % of a core): its choice holds for this run and is not cached." in caplog.text
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, cpu_clock=lambda: clock.now * 0.9)
    assert len(clock.built) == 4 and cache.path.exists()  # measured again, then kept
    tune(rt, "training", make_step, WHAT, SHAPE, cache, clock, cpu_clock=lambda: clock.now * 0.9)
    assert len(clock.built) == 4
