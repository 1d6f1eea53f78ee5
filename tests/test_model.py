"""Freezing by parameter groups, learning rates per group, and the real default architectures."""

import pytest
import torch

from histofuse.errors import RecipeError
from histofuse.model import build_model, count_parameters
from histofuse.phase_plan import apply_phase


@pytest.fixture
def model(tiny_recipe, registry):
    torch.manual_seed(0)
    return build_model(tiny_recipe, registry, num_classes=2)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def group_names(model, backbone):
    ids = [{id(p) for p in g} for g in model.backbones[backbone].parameter_groups()]
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[i] for i in group} for group in ids]


def test_head_phase_trains_only_fusion_and_head(model, tiny_recipe):
    plan = apply_phase(model, tiny_recipe.phases[0])
    names = trainable_names(model)
    assert names and all(n.startswith(("fusion.", "head.")) for n in names)
    assert [g["name"] for g in plan.param_groups] == ["head"]
    assert plan.param_groups[0]["lr"] == 1e-3


def test_partial_phase_trains_exactly_the_last_groups_at_the_backbone_rate(model, tiny_recipe):
    plan = apply_phase(model, tiny_recipe.phases[1])  # cnn: last 2, vit: last 2
    names = trainable_names(model)
    for backbone in ("cnn", "vit"):
        groups = group_names(model, backbone)
        assert set().union(*groups[-2:]) <= names
        assert not (set().union(*groups[:-2]) & names)
    lrs = {g["name"]: g["lr"] for g in plan.param_groups}
    assert lrs == {"head": 1e-3, "cnn": 1e-4, "vit": 1e-4}
    backbone_ids = {id(p) for g in plan.param_groups[1:] for p in g["params"]}
    assert backbone_ids == {id(p) for n, p in model.named_parameters() if n in names and n.startswith("backbones.")}


def test_each_backbone_can_have_its_own_learning_rate(model, tiny_recipe_dict):
    from histofuse.recipe import parse_recipe

    tiny_recipe_dict["phases"][1]["lr"] = {"head": 1e-3, "backbone": 1e-4, "vit": 5e-6}
    plan = apply_phase(model, parse_recipe(tiny_recipe_dict).phases[1])
    assert {g["name"]: g["lr"] for g in plan.param_groups} == {"head": 1e-3, "cnn": 1e-4, "vit": 5e-6}


def test_full_phase_trains_everything(model, tiny_recipe):
    apply_phase(model, tiny_recipe.phases[2])
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}


def test_only_trainable_parameters_receive_gradients_and_frozen_backbones_build_no_graph(model, tiny_recipe):
    apply_phase(model, tiny_recipe.phases[1])
    model.train()
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable_names(model)

    model.zero_grad(set_to_none=True)
    apply_phase(model, tiny_recipe.phases[0])
    model.train()
    assert not model.backbones["cnn"].training  # frozen: batch-norm statistics stay put
    features = model.features(torch.rand(2, 3, 32, 32))
    assert all(f.grad_fn is None for f in features)


def test_frozen_backbone_batchnorm_statistics_do_not_move(model, tiny_recipe):
    apply_phase(model, tiny_recipe.phases[0])
    model.train()
    before = {k: v.clone() for k, v in model.backbones["cnn"].state_dict().items() if "running_mean" in k}
    model(torch.rand(4, 3, 32, 32) * 3)
    after = model.backbones["cnn"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def running_stats(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def norm_owner(name: str) -> str:
    return name.rsplit(".", 1)[0]


def train_steps(model, plan, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW(plan.param_groups)
    model.train()
    for _ in range(steps):
        model(torch.rand(4, 3, 32, 32) * 2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_frozen_batchnorms_of_a_partly_unfrozen_backbone_keep_their_statistics_bit_for_bit(model, tiny_recipe):
    """The defect behind phases that undid the head phase: a frozen stem normalised with batch statistics."""
    plan = apply_phase(model, tiny_recipe.phases[1])  # cnn: last 2 groups train
    params = dict(model.named_parameters())
    before = running_stats(model)
    train_steps(model, plan)
    after = model.state_dict()
    frozen = [k for k in before if not params[norm_owner(k) + ".weight"].requires_grad]
    trained = [k for k in before if params[norm_owner(k) + ".weight"].requires_grad]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    # batchnorm = "auto" on random weights means "train": there are no statistics worth keeping.
    assert model.pretrained == set() and any(not torch.equal(before[k], after[k]) for k in trained)
    modules = dict(model.named_modules())
    assert not any(modules[norm_owner(k)].training for k in frozen)
    assert model.backbones["cnn"].training and model.head.training


@pytest.mark.parametrize("how", ["frozen", "auto on pretrained weights"])
def test_batchnorm_frozen_keeps_every_statistic_while_the_layers_still_learn(model, tiny_recipe, how):
    if how == "frozen":
        phase = tiny_recipe.phases[2].model_copy(update={"batchnorm": "frozen"})  # everything trains
    else:
        model.pretrained = {"cnn", "vit"}  # what build_model records for backbones with weights
        phase = tiny_recipe.phases[2]
    plan = apply_phase(model, phase)
    before = running_stats(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "bn" in n}
    train_steps(model, plan)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(weights[n], p) for n, p in model.named_parameters() if n in weights)
    model.eval()
    model.train()  # the rule holds whenever train() is called, e.g. after every validation
    assert not any(m.training for n, m in model.named_modules() if n + ".running_mean" in before)


def test_layer_decay_scales_each_group_below_the_top_and_marks_newly_unfrozen_ones(model, tiny_recipe):
    partial, full = tiny_recipe.phases[1], tiny_recipe.phases[2].model_copy(update={"layer_decay": 0.5})
    plan = apply_phase(model, full, previous=partial)
    groups = [g for g in plan.param_groups if g["name"] == "cnn"]
    assert len(groups) == len(model.backbones["cnn"].parameter_groups())
    assert [g["lr"] for g in groups] == [1e-5 * 0.5**depth for depth in range(len(groups))]
    assert [g["warmup"] for g in groups] == [False, False] + [True] * (len(groups) - 2)  # the partial phase trained 2
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.backbones["cnn"].parameters()}
    assert not apply_phase(model, partial, previous=tiny_recipe.phases[0]).param_groups[0]["warmup"]  # the head


def test_unfreezing_more_groups_than_exist_is_a_clear_error(model, tiny_recipe):
    phase = tiny_recipe.phases[1].model_copy(update={"unfreeze": {"cnn": 99}})
    with pytest.raises(RecipeError, match=r"phases\[1\].unfreeze.cnn: asks for the last 99 parameter groups but backbone 'cnn' has 6"):
        apply_phase(model, phase, "phases[1]")


def test_concat_fusion_and_head_have_the_configured_shape(model):
    assert model.fusion.out_features == 32
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    layers = [type(m).__name__ for m in model.fusion.layers] + [type(m).__name__ for m in model.head.layers]
    assert layers == ["LayerNorm", "Linear", "GELU", "LayerNorm", "Dropout", "Linear", "LayerNorm", "Linear", "GELU", "Dropout", "Linear"]


def test_each_backbone_sees_its_own_normalisation(model):
    assert model.backbones["cnn"].mean == (0.485, 0.456, 0.406)
    assert model.backbones["vit"].mean == (0.5, 0.5, 0.5)
    x = torch.full((1, 3, 4, 4), 0.5)
    assert torch.allclose(model.normalize["vit"](x), torch.zeros_like(x))


def test_the_papers_default_architectures_build_and_run(registry):
    """tf_efficientnetv2_s + vit_base_patch16_224 with the paper's head, for real (random weights)."""
    from conftest import REPO

    from histofuse.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "breakhis_phased.toml", ["model.backbones[0].pretrained=false", "model.backbones[1].pretrained=false"])
    torch.manual_seed(0)
    model = build_model(recipe, registry, num_classes=2)
    assert model.backbones["cnn"].num_features == 1280
    assert model.backbones["vit"].num_features == 768
    assert len(model.backbones["cnn"].parameter_groups()) == 7
    assert len(model.backbones["vit"].parameter_groups()) == 13
    assert 109e6 < count_parameters(model) < 110.5e6
    plan = apply_phase(model, recipe.phases[1])
    assert plan.unfrozen_groups == {"cnn": 3, "vit": 4}
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 2)


def test_magnification_embedding_uses_unknown_for_missing_values(tiny_recipe_dict, registry):
    from histofuse.recipe import parse_recipe

    tiny_recipe_dict["model"]["magnification"] = {"enabled": True, "dim": 3, "unknown_rate": 0.0}
    model = build_model(parse_recipe(tiny_recipe_dict), registry, num_classes=2).eval()
    x = torch.rand(2, 3, 32, 32)
    unknown = model(x)  # no magnification given: index 0 for every image
    assert torch.allclose(unknown, model(x, torch.zeros(2, dtype=torch.long)))
    assert not torch.allclose(unknown, model(x, torch.tensor([1, 4])))
    assert {id(p) for p in model.magnification.parameters()} <= {id(p) for p in model.head_parameters()}


@pytest.mark.parametrize("count", [1, 3])
def test_one_or_three_backbones_each_with_its_own_depth_and_rate(tiny_recipe_dict, registry, count):
    from histofuse.recipe import check_recipe, parse_recipe

    extra = {"name": "cnn2", "source": "timm", "model": "test_efficientnet", "pretrained": False}
    backbones = tiny_recipe_dict["model"]["backbones"]
    tiny_recipe_dict["model"]["backbones"] = backbones[:1] if count == 1 else [*backbones, extra]
    names = [b["name"] for b in tiny_recipe_dict["model"]["backbones"]]
    depth = {name: i + 1 for i, name in enumerate(names)}
    tiny_recipe_dict["phases"][1]["unfreeze"] = depth
    tiny_recipe_dict["phases"][1]["lr"] = {"head": 1e-3, "backbone": 1e-4, names[-1]: 1e-5}
    recipe = parse_recipe(tiny_recipe_dict)
    assert check_recipe(recipe, registry) == []
    model = build_model(recipe, registry, num_classes=2)
    plan = apply_phase(model, recipe.phases[1])
    assert plan.unfrozen_groups == depth
    assert list(dict.fromkeys(g["name"] for g in plan.param_groups)) == ["head", *names]
    assert {g["lr"] for g in plan.param_groups if g["name"] == names[-1]} == {1e-5}
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
