"""Time-budgeted schedules: the rate reaches its floor at the budget, resumes exactly, and runs end within it."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY, compose_config
from unet_train.engine.budget import MARGIN, TimeBudget
from unet_train.engine.fit import fit
from unet_train.engine.schedulers import cosine, poly


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize(("factory", "floor"), [(cosine, 0.01), (poly, 0.0)])
def test_time_based_schedule_reaches_its_floor_at_the_budget(factory, floor):
    clock = FakeClock()
    budget = TimeBudget(100.0, clock=clock)
    opt = optimizer()
    # total_steps far away: only the clock decides the decay.
    sched = factory(opt, total_steps=10**9, progress=budget.fraction)
    rates = []
    for _ in range(10):
        clock.now += 10.0
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[4] == pytest.approx(0.505 if factory is cosine else 0.5**0.9)  # half the budget spent
    assert rates[-1] == pytest.approx(floor)
    clock.now += 50.0  # past the budget the rate stays at its floor
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(floor)


def test_reserve_for_the_final_validation_brings_the_floor_forward():
    clock = FakeClock()
    budget = TimeBudget(100.0, clock=clock)
    budget.record_validation(5.0)
    budget.record_checkpoint(1.0)
    assert budget.reserve == pytest.approx(MARGIN * 6.0)
    clock.now += 100.0 - MARGIN * 6.0 + 1e-6
    assert budget.fraction() == 1.0 and budget.out_of_time()
    clock.now -= 5.0  # 87.8 s: training goes on, but another validation (6 s) and the final reserve (7.2 s) do not fit
    assert not budget.out_of_time() and not budget.allows_validation()
    clock.now -= 5.0
    assert budget.allows_validation()


def test_time_based_schedule_resumes_exactly():
    def run(steps: int, clock: FakeClock, budget: TimeBudget, sched_state=None):
        opt = optimizer()
        sched = cosine(opt, total_steps=10**9, warmup_steps=3, progress=budget.fraction)
        if sched_state is not None:
            sched.load_state_dict(sched_state)
        rates = []
        for _ in range(steps):
            clock.now += 7.0
            opt.step()
            sched.step()
            rates.append(opt.param_groups[0]["lr"])
        return rates, sched.state_dict(), budget.elapsed

    clock = FakeClock()
    whole, _, _ = run(12, clock, TimeBudget(84.0, clock=clock))
    clock = FakeClock()
    first, state, elapsed = run(5, clock, TimeBudget(84.0, clock=clock))
    clock = FakeClock()
    clock.now = 5000.0  # another process: another clock origin, the stored elapsed time carries on
    resumed = TimeBudget(84.0, elapsed_before=elapsed, clock=clock)
    second, _, _ = run(7, clock, resumed, state)
    assert first + second == whole  # bit for bit
    assert whole[-1] == pytest.approx(0.01)


@pytest.mark.slow
def test_a_budgeted_run_ends_within_its_budget_with_its_final_validation(tmp_path):
    # Validating 16 images costs several TINY steps: the run must stop training early enough for it.
    budget = 20.0
    cfg = compose_config([
        *TINY, "trainer.max_epochs=100000", f"trainer.max_time={budget}", "data.num_val=16",
        "data.num_workers=0",
    ])  # fmt: skip
    metrics = fit(cfg, tmp_path)
    assert metrics["time_s"] <= budget * 1.05
    assert "val/dice" in metrics and metrics["steps"] > 5
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert 0 < state["elapsed"] <= budget * 1.05
    assert json.loads((tmp_path / "metrics.json").read_text())["time_s"] == metrics["time_s"]
