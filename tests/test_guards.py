"""The two guards of a multi-process launch, made to fire: weights that drifted apart between processes, and a
launcher that started several processes that each see only themselves (WORLD_SIZE > 1, one process visible).

The guards run as shipped; only what they inspect is constructed (a fake accelerator, a second process's
parameters). All in the test process but the last, one `python -m histofuse run` under WORLD_SIZE=2 (~5 s)."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from histofuse.errors import HistofuseError
import histofuse.training.trainer as trainer_module
from histofuse.training.processes import check_processes_agree

GUARD = check_processes_agree

DRIFT = (
    "after phase '{}' the processes hold different weights: the distributed setup did not synchronise gradients. "
    "Check the launcher (docs/training.md, several processes)."
)
WORLD = (
    "the launcher started {} processes but each sees only itself, so every one would train the same model alone. "
    "On a CPU-only machine launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N, "
    "or torchrun (see docs/training.md)."
)


# --- the cross-process weight-drift check (training/processes.py: check_processes_agree) ----------------------


class TwoProcesses:
    """An accelerator as process 0 of two sees it: ``gather`` stacks this process's tensor on top of the one that
    process 1 sent, the fingerprint of process 1's copy of the model."""

    num_processes = 2

    def __init__(self, process1: torch.Tensor):
        self.process1, self.gathered = process1, 0

    def unwrap_model(self, model, **_):
        return model

    def gather(self, tensor):
        self.gathered += 1
        return torch.cat([tensor, self.process1])


class Capture(TwoProcesses):
    """Process 1's own view: ``gather`` records what it is given (its fingerprint) and hands back only that."""

    def __init__(self):
        super().__init__(None)

    def gather(self, tensor):
        self.process1 = tensor
        return tensor


def fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """What process 1 would send for ``model``, computed by the guard itself."""
    capture = Capture()
    check(model, capture)
    return capture.process1


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # a frozen layer, as in the head phase: only what trains is compared
    return model


def check(model, accelerator, phase: str = "partial"):
    """The guard as shipped (taken before any test patches it)."""
    GUARD(accelerator, model, phase)


def test_the_drift_check_fires_when_one_trained_weight_differs_between_processes():
    mine, theirs = small_model(), small_model()
    check(mine, TwoProcesses(fingerprint(theirs)))  # identical copies: silent
    with torch.no_grad():
        theirs[2].weight[1, 0] += 1e-6  # one weight, a millionth apart: gradients were not all-reduced
    accelerator = TwoProcesses(fingerprint(theirs))
    with pytest.raises(HistofuseError) as caught:
        check(mine, accelerator)
    assert str(caught.value) == DRIFT.format("partial") and accelerator.gathered == 1


def test_the_drift_check_compares_only_what_trains_and_nothing_with_one_process():
    mine, theirs = small_model(), small_model()
    with torch.no_grad():
        theirs[0].weight.add_(1.0)  # frozen: both processes loaded it, neither trained it
    check(mine, TwoProcesses(fingerprint(theirs)))

    class OneProcess:
        num_processes = 1

        def gather(self, tensor):
            raise AssertionError("a single process has no one to compare with")

    check(mine, OneProcess())


def test_a_run_whose_processes_drift_apart_stops_after_that_phase_and_exits_1(tmp_path, tiny_recipe_dict, monkeypatch):
    """The real run, one process; at the end of the first phase the check sees a second process whose copy of the
    model differs in one trained weight. The run stops there with the message: no later phase, no test metrics."""
    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    phases = []

    def with_a_drifted_second_process(accelerator, model, phase_name):
        phases.append(phase_name)
        weight = next(p for p in model.parameters() if p.requires_grad)
        kept = weight.detach().clone()
        with torch.no_grad():
            weight.view(-1)[0] += 1e-3  # process 1's copy: one trained weight apart
            process1 = fingerprint(model)
            weight.copy_(kept)
        check(model, TwoProcesses(process1), phase_name)

    monkeypatch.setattr(trainer_module, "check_processes_agree", with_a_drifted_second_process)
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    with pytest.raises(HistofuseError) as caught:
        run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert str(caught.value) == DRIFT.format("head") and caught.value.exit_code == 1
    assert phases == ["head"]  # phases 'partial' and 'full' never started
    run_dir = only_run_dir(tmp_path / "runs")
    assert pd.read_csv(run_dir / "history.csv")["phase"].tolist() == ["head"]
    assert not (run_dir / "metrics.json").exists()


# --- the WORLD_SIZE check (histofuse.run.make_accelerator) ---------------------------------------------------------


class FakeAccelerator:
    def __init__(self, num_processes: int):
        self.num_processes = num_processes
        self.kwargs = None

    def __call__(self, **kwargs):
        self.kwargs = kwargs
        return self


@pytest.mark.parametrize("world_size, visible, fires", [("4", 1, True), ("2", 1, True), ("2", 2, False), ("1", 1, False), (None, 1, False)])
def test_the_world_size_check_fires_only_when_the_launcher_started_more_processes_than_are_visible(
    tiny_recipe, monkeypatch, world_size, visible, fires
):
    import accelerate

    from histofuse.run import make_accelerator

    fake = FakeAccelerator(visible)
    monkeypatch.setattr(accelerate, "Accelerator", fake)
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    if fires:
        with pytest.raises(HistofuseError) as caught:
            make_accelerator(tiny_recipe)
        assert str(caught.value) == WORLD.format(world_size) and caught.value.exit_code == 1
    else:
        assert make_accelerator(tiny_recipe) is fake
    assert fake.kwargs is not None  # the check reads the accelerator Accelerate built, after building it


def test_a_run_launched_with_world_size_2_but_no_process_group_exits_1_before_creating_anything(tmp_path, tiny_recipe_dict):
    """The real CLI and the real Accelerator: WORLD_SIZE=2 without RANK / MASTER_ADDR (a launcher whose processes
    never join one group) leaves Accelerate with one process; histofuse refuses before the run directory exists."""
    from conftest import write_toml

    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")}
    env.update(WORLD_SIZE="2", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "histofuse", "run", str(recipe), "-o", str(tmp_path / "runs")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"error: {WORLD.format(2)}" in " ".join(done.stderr.split()), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()
