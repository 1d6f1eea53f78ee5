"""Contract tests run for every registered fusion, so a new one is tested the moment it registers."""

import numpy as np
import pandas as pd
import pytest
import torch

from histofuse.recipe import validate_options


def fusion_names():
    from histofuse_builtins import fusion_concat, fusion_cross_attention, fusion_gated

    from histofuse.plugins import create_plugin_manager
    from histofuse.registry import Registry

    pm = create_plugin_manager(entry_points=False, plugins=(fusion_concat, fusion_gated, fusion_cross_attention))
    return Registry(pm).names("fusion")


def inputs_for(spec, widths, batch=5):
    """Pooled vectors, or token sequences of different lengths (a CNN map and a ViT's tokens differ)."""
    if spec.inputs == "tokens":
        return [torch.randn(batch, 3 + 4 * i, w, requires_grad=True) for i, w in enumerate(widths)]
    return [torch.randn(batch, w, requires_grad=True) for w in widths]


@pytest.mark.parametrize("name", fusion_names())
@pytest.mark.parametrize("widths", [[256, 64], [32], [16, 24, 40]], ids=["two", "one", "three"])
def test_fusion_maps_any_number_of_backbones_to_out_features_and_trains_every_parameter(registry, name, widths):
    spec = registry.get("fusion", name)
    options = {"dim": 12, "dropout": 0.0} | ({"width": 16, "heads": 2} if spec.inputs == "tokens" else {})
    fusion = spec.build(in_features=widths, **validate_options(spec, options))
    features = inputs_for(spec, widths)
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


def train_with_fusion(tmp_path, recipe_dict, monkeypatch, fusion: str, options: dict):
    """Train the tiny recipe with ``fusion``; return the run loaded back, its fusion's weights as built before
    training, and a batch of four of its test images."""
    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    import histofuse.model
    from histofuse.data.decode import decode_image
    from histofuse.inference import LoadedRun

    built, build_model = [], histofuse.model.build_model

    def spy(*args, **kwargs):
        model = build_model(*args, **kwargs)
        if kwargs.get("pretrained", True):  # the model run_recipe trains (the pre-training checks build theirs unpretrained)
            built.append({k: v.detach().clone() for k, v in model.fusion.state_dict().items()})
        return model

    monkeypatch.setattr(histofuse.model, "build_model", spy)
    recipe_dict["model"]["fusion"], recipe_dict["model"]["fusion_options"] = fusion, options
    result = run_cli(["run", str(write_toml(tmp_path / f"{fusion}.toml", recipe_dict)), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    run_dir = only_run_dir(tmp_path / "runs")
    history = pd.read_csv(run_dir / "history.csv")
    assert history["phase"].tolist() == ["head", "partial", "full"] and np.isfinite(history["train_loss"]).all()
    split = pd.read_csv(run_dir / "split.csv")
    run = LoadedRun(run_dir)
    images = torch.stack([run.preprocess(decode_image(p), False) for p in split.loc[split["split"] == "test", "path"][:4]])
    [initial] = built
    return run, initial, images


def assert_trained_and_fusing_every_backbone(run, initial: dict, images: torch.Tensor) -> None:
    """Training moved every weight of the fusion, and the logits of each image change when one backbone's features
    alone are swapped for another image's: the fused model uses every backbone."""
    trained = run.model.fusion.state_dict()
    assert trained.keys() == initial.keys()
    assert [k for k in initial if torch.equal(initial[k], trained[k])] == []
    with torch.no_grad():
        features = run.model.features(images)
        logits = run.model.classify(features)
        torch.testing.assert_close(logits, run.model(images))
        for i, name in enumerate(run.model.backbones):
            swapped = [f.roll(1, dims=0) if j == i else f for j, f in enumerate(features)]
            change = (run.model.classify(swapped) - logits).abs().amax(dim=1)
            assert (change > 1e-4).all(), (name, change)  # measured: 0.0025 to 0.11


def test_a_recipe_trains_with_the_gated_fusion(tmp_path, tiny_recipe_dict, monkeypatch):
    run, initial, images = train_with_fusion(tmp_path, tiny_recipe_dict, monkeypatch, "gated", {"dim": 16, "dropout": 0.1})
    assert type(run.model.fusion).__name__ == "GatedFusion"
    assert_trained_and_fusing_every_backbone(run, initial, images)
    with torch.no_grad():
        run.model(images)
    gates = run.model.fusion.last_gates  # one weight per backbone and image, summing to one
    assert gates.shape == (4, 2) and torch.allclose(gates.sum(1), torch.ones(4)) and (gates > 0).all()


def test_cross_attention_passes_gradients_in_both_directions(registry):
    """Backbone A's pooled output depends on backbone B's tokens through attention alone, and vice versa."""
    spec = registry.get("fusion", "cross_attention")
    width = 8
    for direction, reaches in (("both", (True, True)), ("one_way", (True, False))):
        fusion = spec.build(in_features=[8, 6], dim=4, width=width, heads=2, dropout=0.0, direction=direction)
        pooled = {}
        fusion.out[0].register_forward_hook(lambda module, inputs, output: pooled.update(x=inputs[0]))
        for half, other in ((0, 1), (1, 0)):
            tokens = [torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 7, 6, requires_grad=True)]
            fusion(tokens)
            # The pooled tokens of one backbone only: the other reaches them through attention or not at all.
            pooled["x"][:, half * width : (half + 1) * width].sum().backward()
            assert (tokens[other].grad is not None and tokens[other].grad.abs().sum() > 0) == reaches[half], (direction, half)


def test_a_recipe_trains_with_cross_attention(tmp_path, tiny_recipe_dict, monkeypatch):
    options = {"dim": 16, "width": 16, "heads": 2, "dropout": 0.0}
    run, initial, images = train_with_fusion(tmp_path, tiny_recipe_dict, monkeypatch, "cross_attention", options)
    assert type(run.model.fusion).__name__ == "CrossAttentionFusion" and run.model.inputs == "tokens"
    with torch.no_grad():
        cnn, vit = run.model.features(images)
    assert cnn.ndim == vit.ndim == 3 and cnn.shape[0] == vit.shape[0] == 4  # token sequences, not pooled vectors
    assert_trained_and_fusing_every_backbone(run, initial, images)
