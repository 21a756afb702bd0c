"""data.num_workers=auto (issue 29): loader workers from a batch's cost against a step's, on the CPUs there are."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conftest import TINY, compose_config
from unet_train import cpus
from unet_train.engine import workers
from unet_train.engine.run import build_run
from unet_train.engine.workers import MAX_WORKERS, auto_workers, choose_workers, seconds_per_batch
from unet_train.errors import ConfigError


@pytest.mark.parametrize(
    ("load_s", "step_s", "cpus_", "threads", "expected"),
    [
        (0.04, 1.0, 2, 2, 0),  # 4 % of a step and no spare CPU: made in the main process
        (0.06, 1.0, 2, 2, 1),  # 6 %: one worker (ceil(0.06 * 1.25) = 1)
        (0.5, 1.0, 2, 2, 1),  # ceil(0.625) = 1
        (3.0, 1.0, 2, 2, 2),  # ceil(3.75) = 4 wanted, no more than the 2 CPUs
        (0.01, 1.0, 8, 4, 0),  # cheap loading: in the main process even with 4 CPUs spare
        (0.1, 1.0, 8, 4, 1),  # ceil(0.125) = 1
        (2.0, 0.5, 16, 4, 5),  # ceil(4 * 1.25) = 5 of the 12 spare CPUs
        (20.0, 1.0, 64, 4, MAX_WORKERS),  # 25 wanted, at most 8
        (0.5, 1.0, 1, 1, 1),  # one CPU: a worker anyway where loading is half a step (overlaps file reads)
    ],
)
def test_the_choice_from_the_loading_share_and_the_spare_cpus(load_s, step_s, cpus_, threads, expected):
    assert choose_workers(load_s, step_s, cpus_, threads).workers == expected


def test_the_reason_gives_the_figures():
    inline = choose_workers(0.012, 0.4, 2, 2)
    assert inline.reason == (
        "a batch takes 0.012 s to make, 3% of a 0.4 s step; 2 CPUs, 2 torch threads: made in the main process, "
        "which costs less than a worker's process"
    )
    one = choose_workers(0.3, 0.4, 2, 1)
    assert one.reason.endswith("75% of a 0.4 s step; 2 CPUs, 1 torch thread: 1 worker to keep up")


def test_a_batch_is_timed_after_an_untimed_first_item(monkeypatch):
    """A fake clock that advances 0.1 s per item: a batch of 4 costs 0.4 s; the first item (opening files) is not
    counted, and two batches' worth are timed."""
    clock = {"now": 0.0}
    made = []

    def make(i: int) -> None:
        made.append(i)
        clock["now"] += 0.1 if i else 5.0  # the first item is slow

    monkeypatch.setattr(workers.time, "perf_counter", lambda: clock["now"])
    assert seconds_per_batch(make, batch_size=4) == pytest.approx(0.4)
    assert made == list(range(9))


def test_a_gpu_or_several_cpu_processes_are_not_measured(monkeypatch):
    monkeypatch.setattr(workers, "usable_cpus", lambda: 6)

    def never() -> tuple[float, float]:
        raise AssertionError("measured")

    assert auto_workers(torch.device("cuda"), 1, never).workers == 5
    assert auto_workers(torch.device("cuda"), 2, never).workers == 2  # 3 CPUs a rank, one left to it
    assert auto_workers(torch.device("cpu"), 2, never).workers == 0
    assert auto_workers(torch.device("cpu"), 1, lambda: (0.2, 1.0)).workers == 1  # threads 1 of 6 CPUs


def test_default_workers_leave_a_cpu_to_the_model():
    assert [cpus.default_workers(n) for n in (1, 2, 3, 8)] == [0, 1, 2, 2]


def test_a_run_takes_the_measured_choice_and_logs_it(monkeypatch, caplog):
    """The run's own loaders get the choice; the measurement is the run's (a real batch and step, no fakes)."""
    cfg = compose_config([*TINY, "data.num_workers=auto"])
    with caplog.at_level(logging.INFO, logger="unet_train.engine.workers"):
        run = build_run(cfg)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data.num_workers=auto")]
    chosen = int(line.split(": ")[1].split(" ")[0])
    assert run.train_loader.num_workers == run.val_loader.num_workers == chosen
    assert "s to make" in line and "s step;" in line

    monkeypatch.setattr(workers, "measure_loading", lambda *args: (0.01, 1.0))
    assert build_run(cfg).train_loader.num_workers == 0
    monkeypatch.setattr(workers, "measure_loading", lambda *args: (0.5, 1.0))
    assert build_run(cfg).train_loader.num_workers == 1


def test_a_bad_worker_count_reaching_the_data_module_is_refused_in_one_line():
    """preflight names it first on the command line (tests/engine/test_preflight.py); a data module built by code
    says the same."""
    from unet_train.data.synthetic import SyntheticMembranes

    with pytest.raises(ConfigError, match=r"^data.num_workers=True must be 0 or more, or auto.$"):
        SyntheticMembranes(num_workers=True)


def test_the_timed_items_carry_the_weight_maps_the_loader_makes(monkeypatch):
    """loss=weighted_bce: the loader's workers make a weight map with each item (distance transforms, as costly as
    the augmentation); the measurement times the items the loader makes, weight maps included."""
    timed: list[dict] = []

    def spy(make_item, batch_size, budget_s=workers.MEASURE_S):
        timed.append(make_item(0))
        return 0.01

    monkeypatch.setattr(workers, "seconds_per_batch", spy)
    run = build_run(compose_config([*TINY, "data.num_workers=auto", "loss=weighted_bce"]))
    (item,) = timed
    assert "weight" in next(iter(run.train_loader))
    assert item["weight"].shape == item["mask"].shape
