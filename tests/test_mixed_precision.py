"""Mixed precision must survive phase boundaries: prepare -> release -> prepare keeps autocast on."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from histofuse.model import apply_phase, build_model
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
