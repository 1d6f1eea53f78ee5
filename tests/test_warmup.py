"""The warm-up of newly unfrozen groups: a linear ramp that survives plateau cuts and resumes."""

import pytest
import torch

from histofuse.training.warmup import Warmup


def optimizer() -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    return torch.optim.AdamW([
        {"name": "head", "params": [params[0]], "lr": 1e-3, "warmup": False},
        {"name": "cnn", "params": [params[1]], "lr": 1e-4, "warmup": False},  # trained in the phase before
        {"name": "cnn", "params": [params[2]], "lr": 5e-5, "warmup": True},
    ])


def test_only_newly_unfrozen_groups_ramp_linearly_to_their_rate():
    opt = optimizer()
    warmup = Warmup(opt, steps=4)
    seen = []
    for _ in range(6):
        warmup.before_step()
        seen.append([g["lr"] for g in opt.param_groups])
    assert [s[2] for s in seen] == pytest.approx([1.25e-5, 2.5e-5, 3.75e-5, 5e-5, 5e-5, 5e-5])
    assert all(s[:2] == [1e-3, 1e-4] for s in seen)


def test_a_plateau_cut_during_the_ramp_lowers_its_target_and_is_not_undone():
    opt = optimizer()
    warmup = Warmup(opt, steps=4)
    warmup.before_step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0, factor=0.5)
    scheduler.step(1.0)
    ramping = warmup.rates()
    scheduler.step(0.0)  # no improvement, patience 0: every rate halves
    warmup.follow_scheduler(ramping)
    for _ in range(3):
        warmup.before_step()
    assert opt.param_groups[2]["lr"] == pytest.approx(2.5e-5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_the_ramp_resumes_from_an_optimizer_checkpoint_where_it_stopped():
    opt = optimizer()
    warmup = Warmup(opt, steps=4)
    warmup.before_step()
    state = opt.state_dict()
    resumed = optimizer()
    resumed.load_state_dict(state)
    again = Warmup(resumed, steps=4)
    again.before_step()
    assert resumed.param_groups[2]["lr"] == pytest.approx(2.5e-5)


def test_no_ramp_when_the_phase_asks_for_none():
    opt = optimizer()
    Warmup(opt, steps=0).before_step()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4, 5e-5]
