"""Contract tests run for every registered fusion, so a new one is tested the moment it registers."""

import pytest
import torch

from histofuse.recipe import validate_options


def fusion_names():
    from histofuse_builtins import fusion_concat, fusion_gated

    from histofuse.plugins import create_plugin_manager
    from histofuse.registry import Registry

    pm = create_plugin_manager(entry_points=False, plugins=(fusion_concat, fusion_gated))
    return Registry(pm).names("fusion")


@pytest.mark.parametrize("name", fusion_names())
@pytest.mark.parametrize("widths", [[256, 64], [32], [16, 24, 40]], ids=["two", "one", "three"])
def test_fusion_maps_any_number_of_backbones_to_out_features_and_trains_every_parameter(registry, name, widths):
    spec = registry.get("fusion", name)
    fusion = spec.build(in_features=widths, **validate_options(spec, {"dim": 12, "dropout": 0.0}))
    features = [torch.randn(5, w, requires_grad=True) for w in widths]
    out = fusion(features)
    assert out.shape == (5, fusion.out_features) == (5, 12)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
    assert all(f.grad.abs().sum() > 0 for f in features)  # gradients reach every backbone


def test_gated_fusion_weights_sum_to_one_per_image(registry):
    spec = registry.get("fusion", "gated")
    fusion = spec.build(in_features=[8, 4], dim=6, dropout=0.0)
    fusion([torch.randn(3, 8), torch.randn(3, 4)])
    assert fusion.last_gates.shape == (3, 2)
    assert torch.allclose(fusion.last_gates.sum(1), torch.ones(3))


def test_a_recipe_trains_with_the_gated_fusion(tmp_path, tiny_recipe_dict):
    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    tiny_recipe_dict["model"]["fusion"] = "gated"
    tiny_recipe_dict["model"]["fusion_options"] = {"dim": 16, "dropout": 0.1}
    recipe = write_toml(tmp_path / "gated.toml", tiny_recipe_dict)
    assert run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")]).exit_code == 0
    assert (only_run_dir(tmp_path / "runs") / "metrics.json").is_file()
