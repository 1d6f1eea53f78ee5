import copy

import pytest

from conftest import REPO, write_toml
from histofuse.errors import RecipeError
from histofuse.recipe import apply_overrides, check_recipe, load_recipe, parse_recipe, recipe_to_toml


def problems_of(raw):
    with pytest.raises(RecipeError) as info:
        parse_recipe(raw)
    return info.value.problems


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, registry):
    recipe = load_recipe(path)
    assert check_recipe(recipe, registry) == []


def test_wrong_type_names_the_key_path_and_what_was_expected(tiny_recipe_dict):
    tiny_recipe_dict["phases"][1]["lr"]["backbone"] = "fast"
    assert problems_of(tiny_recipe_dict) == ['phases[1].lr.backbone: expected a number, got "fast"']


def test_misspelt_key_is_reported_with_a_suggestion(tiny_recipe_dict):
    tiny_recipe_dict["training"]["label_smothing"] = 0.1
    [problem] = problems_of(tiny_recipe_dict)
    assert problem.startswith("training.label_smothing: unknown key; did you mean 'label_smoothing'?")


def test_all_problems_are_reported_at_once(tiny_recipe_dict):
    tiny_recipe_dict["data"]["batch_size"] = 0
    tiny_recipe_dict["phases"][0]["epochs"] = "three"
    del tiny_recipe_dict["model"]["backbones"][0]["model"]
    tiny_recipe_dict["training"]["mixed_precision"] = "fp8"
    found = problems_of(tiny_recipe_dict)
    assert len(found) == 4
    assert any(p.startswith("data.batch_size: ") and "greater than or equal to 1" in p for p in found)
    assert 'phases[0].epochs: expected an integer, got "three"' in found
    assert "model.backbones[0].model: missing required key" in found
    assert any(p.startswith("training.mixed_precision: expected 'no', 'bf16' or 'fp16'") for p in found)


def test_strings_are_not_silently_turned_into_numbers(tiny_recipe_dict):
    tiny_recipe_dict["training"]["weight_decay"] = "1e-4"
    assert problems_of(tiny_recipe_dict) == ['training.weight_decay: expected a number, got "1e-4"']


def test_empty_phases_and_zero_learning_rate_are_rejected(tiny_recipe_dict):
    raw = copy.deepcopy(tiny_recipe_dict)
    raw["phases"] = []
    assert any(p.startswith("phases: ") for p in problems_of(raw))
    tiny_recipe_dict["phases"][0]["lr"]["head"] = 0
    assert any(p.startswith("phases[0].lr.head: ") for p in problems_of(tiny_recipe_dict))


def test_cross_checks_name_the_offending_keys(tiny_recipe_dict, registry):
    tiny_recipe_dict["phases"][1]["unfreeze"] = {"cnnn": 2}
    tiny_recipe_dict["model"]["fusion"] = "concatt"
    tiny_recipe_dict["model"]["backbones"][1]["model"] = "test_vitt"
    tiny_recipe_dict["data"]["options"]["patients_per_clas"] = 3
    tiny_recipe_dict["phases"][0]["lr"]["backbone"] = 1e-4
    found = check_recipe(parse_recipe(tiny_recipe_dict), registry)
    joined = "\n".join(found)
    assert "phases[1].unfreeze.cnnn: no backbone named 'cnnn'; did you mean 'cnn'?" in joined
    assert "model.fusion: unknown fusion 'concatt'. Did you mean 'concat'?" in joined
    assert "model.backbones[1].model: unknown timm model 'test_vitt'. Did you mean 'test_vit'" in joined
    assert "data.options.patients_per_clas: unknown key; did you mean 'patients_per_class'?" in joined
    assert "phases[0].lr.backbone: set to 0.0001 but this phase unfreezes nothing" in joined
    assert len(found) == 5


def test_overrides_set_nested_and_indexed_keys(tiny_recipe_dict):
    problems = apply_overrides(
        tiny_recipe_dict,
        ["phases[0].epochs=5", "training.label_smoothing=0.2", "data.root=/data/BreaKHis_v1", "phases.2.augment=none"],
    )
    assert problems == []
    recipe = parse_recipe(tiny_recipe_dict)
    assert recipe.phases[0].epochs == 5
    assert recipe.training.label_smoothing == 0.2
    assert recipe.data.root == "/data/BreaKHis_v1"
    assert recipe.phases[2].augment == "none"


def test_bad_overrides_are_reported_not_raised(tiny_recipe_dict):
    problems = apply_overrides(tiny_recipe_dict, ["phases[9].epochs=1", "noequals", "a..b=1"])
    assert problems[0] == "--set phases[9].epochs=1: phases[9].epochs has no item 9"
    assert problems[1].startswith("--set noequals: expected KEY=VALUE")
    assert "is not a key path" in problems[2]


def test_resolved_recipe_round_trips(tiny_recipe, tmp_path):
    path = tmp_path / "resolved.toml"
    path.write_text(recipe_to_toml(tiny_recipe))
    assert load_recipe(path) == tiny_recipe


def test_unreadable_files_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)


def test_recipe_file_errors_use_the_file_name(tmp_path, tiny_recipe_dict):
    tiny_recipe_dict["seed"] = -1
    path = write_toml(tmp_path / "r.toml", tiny_recipe_dict)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: 1 problem")


def test_unknown_keys_keep_their_name_even_when_it_looks_like_a_type(tiny_recipe_dict):
    tiny_recipe_dict["training"]["strength"] = 1
    [problem] = problems_of(tiny_recipe_dict)
    assert problem.startswith("training.strength: unknown key")


def test_gradient_clipping_can_be_switched_off(tiny_recipe_dict):
    tiny_recipe_dict["training"]["grad_clip"] = 0
    assert parse_recipe(tiny_recipe_dict).training.grad_clip == 0
    tiny_recipe_dict["training"]["grad_clip"] = -1
    assert problems_of(tiny_recipe_dict)[0].startswith("training.grad_clip: ")


def test_model_level_problems_are_found_before_training(tiny_recipe_dict, registry):
    from histofuse.summary import check_model

    tiny_recipe_dict["phases"][2]["unfreeze"] = {"cnn": 99, "vit": 1}
    tiny_recipe_dict["model"]["backbones"][1]["options"] = {"not_an_option": 1}
    problems, model = check_model(parse_recipe(tiny_recipe_dict), registry)
    assert model is None
    assert problems[0].startswith("model.backbones[1].options: 'timm' cannot build 'test_vit'")
    del tiny_recipe_dict["model"]["backbones"][1]["options"]
    problems, model = check_model(parse_recipe(tiny_recipe_dict), registry)
    assert problems == [
        "phases[2].unfreeze.cnn: asks for the last 99 parameter groups but backbone 'cnn' has 6; use at most 6 or \"all\""
    ]


def test_per_backbone_learning_rates_must_name_backbones_and_be_numbers(tiny_recipe_dict, registry):
    tiny_recipe_dict["phases"][1]["lr"] = {"head": 1e-3, "backbone": 1e-4, "vitt": 1e-5, "cnn": "slow"}
    found = check_recipe(parse_recipe(tiny_recipe_dict), registry)
    assert any(p.startswith("phases[1].lr.vitt: unknown key; did you mean 'vit'?") for p in found)
    assert 'phases[1].lr.cnn: expected a number between 0 and 1, got "slow"' in found
