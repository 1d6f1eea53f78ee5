"""Mixed precision must survive phase boundaries: prepare -> release -> prepare keeps autocast on."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from histofuse.model import build_model
from histofuse.phase_plan import apply_phase
from histofuse.training.accel import prepare_phase, release


@pytest.fixture
def bf16_accelerator():
    AcceleratorState._reset_state(True)
    yield Accelerator(mixed_precision="bf16", cpu=True)
    AcceleratorState._reset_state(True)


def test_every_phase_runs_under_autocast(bf16_accelerator, tiny_recipe, registry):
    model = build_model(tiny_recipe, registry, num_classes=2)
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    for phase in tiny_recipe.phases:
        plan = apply_phase(model, phase)
        optimizer = torch.optim.AdamW(plan.param_groups)
        prepared, optimizer = prepare_phase(bf16_accelerator, model, optimizer)
        out = prepared(torch.rand(2, 3, 32, 32))
        assert out.dtype == torch.float32  # Accelerate hands back fp32 outputs
        model = release(bf16_accelerator, prepared)
    assert seen == [torch.bfloat16] * len(tiny_recipe.phases)
    model.eval()(torch.rand(1, 3, 32, 32))
    assert seen[-1] == torch.float32  # released: the plain model again


@pytest.fixture
def compiling_accelerator():
    AcceleratorState._reset_state(True)
    yield Accelerator(cpu=True, dynamo_backend="inductor")
    AcceleratorState._reset_state(True)


def test_a_compiled_phase_saves_and_releases_the_plain_model(compiling_accelerator, tmp_path):
    """torch.compile wraps the model in prepare(); saved keys must not carry its ``_orig_mod.`` prefix and the
    next phase must get the model itself back. Nothing runs forward: compiling takes most of a minute on a CPU."""
    from safetensors.torch import load_file

    from histofuse.training.accel import unwrap
    from histofuse.training.checkpoint import save_weights
    from histofuse.training.epoch_checkpoint import TrainingState, latest_checkpoint, save_checkpoint

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters())
    prepared, prepared_optimizer = prepare_phase(compiling_accelerator, model, optimizer)
    assert isinstance(prepared, torch._dynamo.eval_frame.OptimizedModule)
    save_weights(unwrap(compiling_accelerator, prepared), tmp_path, {"epoch": 1})
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(prepared_optimizer)
    save_checkpoint(tmp_path, TrainingState(epoch=1, best_epoch=1), unwrap(compiling_accelerator, prepared),
                    prepared_optimizer, scheduler, keep=1)
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    latest_checkpoint(tmp_path, warn=pytest.fail).load_model(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)))

    released = release(compiling_accelerator, prepared)
    assert released is model
    again, _ = prepare_phase(compiling_accelerator, released, torch.optim.AdamW(released.parameters()))
    assert again._orig_mod is model  # compiled once, around the model, not around the last phase's wrapper
