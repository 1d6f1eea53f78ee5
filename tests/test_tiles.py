"""One physical scale and tiles: rescaling to data.mpp, tissue tiles, a grid that covers the tissue, pooling."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from histofuse.data.tiles import TileCutter, grid_positions, rescale, scale_factors, table_options
from histofuse.errors import DataError, HistofuseError, RecipeError
from histofuse.recipe import DataConfig, TilesConfig
from histofuse.tile_pooling import pool_tile_logits


def nuclear_area(rgb: np.ndarray) -> float:
    """Median area (pixels) of the darkest tenth of the image's connected blobs: the nuclei of synthetic tissue."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    mask = (grey <= np.percentile(grey, 10)).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return float(np.median(areas[areas >= 4]))


def disc_diameters(rgb: np.ndarray) -> list[float]:
    """Equivalent diameters (pixels) of the dark discs wholly inside an image."""
    mask = (cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY) < 128).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    h, w = mask.shape
    inside = [s for s in stats[1:] if s[0] > 0 and s[1] > 0 and s[0] + s[2] < w and s[1] + s[3] < h]
    return [2 * np.sqrt(s[cv2.CC_STAT_AREA] / np.pi) for s in inside]


def seen(sample_image: torch.Tensor) -> np.ndarray:
    return (sample_image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def two_scales(tmp_path_factory):
    """One slide's nuclei (discs 8 µm wide) photographed at 0.5 and at 0.25 µm per pixel: a table with mpp."""
    root = tmp_path_factory.mktemp("scales")
    rows = []
    for mpp, name in ((0.5, "coarse"), (0.25, "fine")):
        px = 1 / mpp  # pixels per µm
        for k in range(3):
            rgb = np.full((round(120 * px), round(160 * px), 3), 235, np.uint8)
            for cy in range(12, 120, 16):  # a disc every 16 µm
                for cx in range(12 + 4 * (k % 2), 160, 16):
                    cv2.circle(rgb, (round(cx * px), round(cy * px)), round(4 * px), (70, 30, 90), -1)
            path = root / f"{name}_{k}.png"
            cv2.imwrite(str(path), rgb)
            rows.append({"path": str(path), "label": ["benign", "malignant"][k % 2], "group": f"{name}{k}", "mpp": mpp})
    table = pd.DataFrame(rows)
    return table[table["mpp"] == 0.5].reset_index(drop=True), table[table["mpp"] == 0.25].reset_index(drop=True)


def tiles_of(frame: pd.DataFrame, mpp: float | None) -> list[np.ndarray]:
    from histofuse.data.loading import ImageTable
    from histofuse_builtins.defaults import build_transforms

    data = DataConfig(dataset="csv", image_size=96, mpp=mpp, tiles=TilesConfig(min_tissue=0.1))
    transform = build_transforms("eval", "none", 96, 0)
    table = ImageTable(frame, ["benign", "malignant"], transform, **table_options(data, frame, False, "test"))
    return [seen(tile) for i in range(len(table)) for tile in table[i]["image"]]


def test_scale_matched_tiles_of_two_native_scales_show_structures_of_one_pixel_size(two_scales):
    coarse, fine = two_scales
    reference = np.median([d for t in tiles_of(coarse, 0.5) for d in disc_diameters(t)])
    matched = np.median([d for t in tiles_of(fine, 0.5) for d in disc_diameters(t)])
    unmatched = np.median([d for t in tiles_of(fine, None) for d in disc_diameters(t)])
    assert abs(reference - 8 / 0.5) < 1.5 and abs(matched - reference) < 1.0, (reference, matched)
    assert abs(unmatched - 2 * reference) < 2.0, (reference, unmatched)  # each image at its own scale


def test_the_synthetic_generator_draws_tissue_at_the_scale_it_declares(tmp_path):
    from histofuse_builtins.data_synthetic import scan_synthetic

    common = {"patients_per_class": 4, "images_per_magnification": 1, "magnifications": [40, 400]}
    coarse = scan_synthetic(tmp_path / "coarse", **common, mpp=0.5, width=192, height=128)
    fine = scan_synthetic(tmp_path / "fine", **common, seed=5, mpp=0.25, width=384, height=256)
    assert set(coarse["mpp"]) == {0.5} and set(fine["mpp"]) == {0.25}
    from histofuse.data.decode import decode_image

    area = {name: np.median([nuclear_area(decode_image(p)) for p in frame["path"]]) for name, frame in
            (("coarse", coarse), ("fine", fine))}
    rescaled = np.median([nuclear_area(rescale(decode_image(p), 0.5)) for p in fine["path"]])
    assert area["fine"] / area["coarse"] > 1.8  # nuclei twice as wide at twice the pixels per µm, whatever the objective
    assert 0.7 < rescaled / area["coarse"] < 1.4


def test_rescaling_follows_each_image_s_scale(two_scales):
    _, fine = two_scales
    assert scale_factors(fine, 0.5, "test") == [0.5] * len(fine)
    image = np.zeros((100, 60, 3), np.uint8)
    assert rescale(image, 0.5).shape == (50, 30, 3) and rescale(image, 2.0).shape == (200, 120, 3)
    assert rescale(image, 1.0) is image


def test_data_mpp_on_a_dataset_without_a_scale_is_refused_with_what_to_do():
    frame = pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "y"], "group": ["1", "2"], "mpp": [0.5, None]})
    with pytest.raises(DataError, match=r"does not give the scale of 1 of its 2 images \(first: b.png\).*mpp option"):
        scale_factors(frame, 0.5, "dataset 'folder'")
    with pytest.raises(DataError, match="of 2 of its 2 images"):
        scale_factors(frame.drop(columns="mpp"), 0.5, "dataset 'folder'")


def test_the_evaluation_grid_covers_every_pixel_of_tissue():
    rng = np.random.default_rng(0)
    cutter = TileCutter(size=64, stride=64, min_tissue=0.5, max_tiles=4096, out=64)
    for _ in range(20):
        h, w = rng.integers(40, 300, size=2)
        rgb = np.full((h, w, 3), 245, np.uint8)  # background
        for _ in range(rng.integers(1, 6)):  # blobs of tissue, some a few pixels wide
            cv2.circle(rgb, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 40)), (150, 60, 140), -1)
        tiles, places = cutter.grid(rgb)
        tissue = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) < 220
        covered = np.zeros((max(h, 64), max(w, 64)), bool)
        for top, left in places:
            covered[top : top + 64, left : left + 64] = True
        assert not (tissue & ~covered[:h, :w]).any()
        assert all(t.shape == (64, 64, 3) for t in tiles) and len(tiles) == len(places)


def test_the_grid_reaches_every_pixel_and_keeps_the_richest_tile_of_an_empty_image():
    for h, w, size, stride in [(100, 100, 32, 32), (130, 70, 64, 48), (20, 500, 64, 64), (64, 64, 64, 16)]:
        covered = np.zeros((max(h, size), max(w, size)), bool)
        for top, left in grid_positions(max(h, size), max(w, size), size, stride):
            covered[top : top + size, left : left + size] = True
        assert covered.all()
    empty = np.full((200, 200, 3), 250, np.uint8)
    tiles, places = TileCutter(64, 64, 0.5, 16, 64).grid(empty)
    assert len(tiles) == 1 and len(places) == 1


def test_a_training_tile_has_the_tissue_asked_for_and_repeats_with_its_seed():
    rgb = np.full((300, 300, 3), 245, np.uint8)
    rgb[150:, 150:] = (150, 60, 140)  # tissue only in one corner
    cutter = TileCutter(size=64, stride=64, min_tissue=0.9, max_tiles=64, out=48)
    for seed in range(10):
        tile = cutter.random_tile(rgb, np.random.default_rng(seed), attempts=64)
        assert tile.shape == (48, 48, 3)  # handed on at the model's input size
        assert (cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY) < 220).mean() >= 0.9
        assert np.array_equal(tile, cutter.random_tile(rgb, np.random.default_rng(seed), attempts=64))


def test_pooling_is_the_mean_of_the_tile_probabilities():
    logits = torch.randn(7, 3)
    counts = torch.tensor([2, 4, 1])
    pooled = pool_tile_logits(logits, counts).softmax(1)
    probs = logits.softmax(1)
    expected = torch.stack([probs[:2].mean(0), probs[2:6].mean(0), probs[6:].mean(0)])
    assert torch.allclose(pooled, expected, atol=1e-6)


def test_a_prediction_over_a_grid_is_the_mean_of_each_tile_predicted_alone(two_scales):
    from accelerate import Accelerator

    from histofuse.data.loading import ImageTable, make_loader
    from histofuse.training.predict import predict
    from histofuse_builtins.defaults import build_transforms

    coarse, _ = two_scales
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).eval()
    data = DataConfig(dataset="synthetic", image_size=64, mpp=0.5, tiles=TilesConfig(stride=48, min_tissue=0.2))
    table = ImageTable(coarse, ["benign", "malignant"], build_transforms("eval", "none", 64, 0),
                       **table_options(data, coarse, False, "test"))
    result = predict(Accelerator(cpu=True), model, make_loader(table, 2, train=False), 2)
    for i, probs in zip(result.indices, result.probs):
        with torch.no_grad():
            alone = model(table[i]["image"]).softmax(1).mean(0).numpy()
        assert np.allclose(probs, alone, atol=1e-5)
    assert max(len(table[i]["tiles"]) for i in range(len(table))) > 1


def test_without_mpp_or_tiles_the_data_path_is_the_one_before_them():
    data = DataConfig(dataset="synthetic", image_size=96, resize=110)
    assert not data.keeps_scale and table_options(data, pd.DataFrame({"path": []}), True, "test") == {}
    from histofuse.data.eval_loader import make_eval_transform
    from histofuse.registry import default_registry

    transform = make_eval_transform(default_registry().pm.hook, data)
    assert "SmallestMaxSize" in repr(transform) and "PadIfNeeded" not in repr(transform)


def test_the_synthetic_marker_of_a_tree_without_mpp_is_unchanged(tmp_path):
    """Trees generated before mpp existed are not regenerated: their marker still matches."""
    import json

    from histofuse_builtins.data_synthetic import SyntheticOptions, ensure_synthetic

    ensure_synthetic(tmp_path, SyntheticOptions(patients_per_class=3, images_per_magnification=1, magnifications=[40]))
    assert "mpp" not in json.loads((tmp_path / ".histofuse-synthetic.json").read_text())


def test_the_decode_cache_keeps_rescaled_images_apart(tmp_path, two_scales):
    from histofuse.data.cache import DecodeCache
    from histofuse.data.decode import decode_image

    path = two_scales[1]["path"].iloc[0]
    cache = DecodeCache(tmp_path / "cache", resize=64)
    assert np.array_equal(cache.load(path, 0.5), rescale(decode_image(path), 0.5))
    assert min(cache.load(path).shape[:2]) == 64  # the same file without a scale: shorter side to resize
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_real_datasets_declare_their_scale_with_its_source():
    from histofuse_builtins.breakhis_layout import MPP
    from histofuse_builtins.data_bach import MPP as BACH_MPP

    assert BACH_MPP == 0.42
    # 6.5 µm camera pixels through a 3.3x relay lens and the 4x..40x objectives.
    assert MPP == {40: 0.4924, 100: 0.197, 200: 0.0985, 400: 0.0492}


def test_tiles_refuse_what_cannot_work_with_them(tiny_recipe_dict):
    from histofuse.recipe import check_recipe, parse_recipe
    from histofuse.registry import default_registry

    tiny_recipe_dict["data"]["tiles"] = {"min_tissue": 0.4, "bag": 4}
    tiny_recipe_dict["evaluation"] = {"tta": "crops5"}
    problems = check_recipe(parse_recipe(tiny_recipe_dict), default_registry())
    assert any(p.startswith("evaluation.tta: crops5") for p in problems), problems
    assert any(p.startswith("data.tiles.bag: a bag of tiles per training image is what attention") for p in problems)
    tiny_recipe_dict["data"]["tiles"]["pooling"] = "attention"
    tiny_recipe_dict["evaluation"] = {"tta": "d4"}
    assert check_recipe(parse_recipe(tiny_recipe_dict), default_registry()) == []
    tiny_recipe_dict["data"]["tiles"]["bag"] = 1  # one tile per image would never train the attention
    with pytest.raises(RecipeError, match=r"data.tiles.bag"):
        parse_recipe(tiny_recipe_dict)


def scaled_recipe(tmp_path, tiny_recipe_dict) -> dict:
    """The tiny recipe on tissue drawn at 0.5 µm/px, tiles at that scale, and a set drawn at 0.25 µm/px."""
    tiny_recipe_dict["data"]["root"] = str(tmp_path / "train")
    tiny_recipe_dict["data"]["options"].update(mpp=0.5, width=96, height=64)
    tiny_recipe_dict["data"].update(mpp=0.5, tiles={"min_tissue": 0.3, "stride": 24})
    tiny_recipe_dict["evaluate"] = [{
        "name": "zoomed", "dataset": "synthetic", "root": str(tmp_path / "zoomed"),
        "options": {"seed": 3, "patients_per_class": 3, "images_per_magnification": 1, "magnifications": [40],
                    "mpp": 0.25, "width": 160, "height": 128},
    }]
    return tiny_recipe_dict


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_a_tiled_run_at_one_scale_evaluates_predicts_explains_and_serves_alike(tmp_path, tiny_recipe_dict, pooling):
    """predict --mpp and the web app pool tiles exactly as the run's evaluation did on the same images. With
    attention pooling, the head phase trains on the cached features of the training grids."""
    from conftest import write_toml
    from test_run import only_run_dir, run_cli

    from histofuse.inference import open_run
    from histofuse.serve import classify
    from histofuse.tile_map import tile_map

    raw = scaled_recipe(tmp_path, tiny_recipe_dict)
    if pooling == "attention":
        raw["data"]["tiles"].update(pooling="attention", bag=3)
        raw["phases"][0].update(cache_features=True, augment="none")
    recipe = write_toml(tmp_path / "tiled.toml", raw)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "scale 0.5 µm/px (" in result.output
    assert ("cached features of" in result.output) == (pooling == "attention")
    run_dir = only_run_dir(tmp_path / "runs")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "error" not in metrics["zoomed"] and metrics["zoomed"]["n"] == 6
    evaluated = pd.read_csv(run_dir / "predictions_zoomed.csv").set_index("path")

    images = [tmp_path / "some" / Path(p).name for p in evaluated.index[:3]]
    images[0].parent.mkdir()
    for source, copy in zip(evaluated.index[:3], images):
        shutil.copy(source, copy)
    out = tmp_path / "predicted.csv"
    result = run_cli(["predict", str(run_dir), *map(str, images), "--mpp", "0.25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(out)
    for source, row in zip(evaluated.index[:3], predicted.itertuples()):
        assert abs(row.prob_malignant - evaluated.loc[source, "prob_malignant"]) < 1e-5

    result = run_cli(["explain", str(run_dir), str(images[0]), "--mpp", "0.25", "--out", str(tmp_path / "why")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "why" / f"{images[0].stem}_tiles.png").is_file()
    assert (tmp_path / "why" / f"{images[0].stem}_attention.png").is_file() == (pooling == "attention")
    assert (tmp_path / "why" / f"{images[0].stem}_cnn.png").is_file()

    run = open_run(run_dir)
    rescaled = cv2.resize(cv2.imread(str(images[0])), (80, 64), interpolation=cv2.INTER_AREA)  # to 0.5 µm/px
    _, upload = cv2.imencode(".png", rescaled)
    probabilities, _, gallery, _ = classify(run, upload.tobytes(), "none", "none", 10_000_000)
    assert abs(probabilities["malignant"] - predicted.loc[0, "prob_malignant"]) < 1e-5
    assert gallery[0][1].startswith("tiles: p(")
    assert gallery[1][1].startswith("attention: ") == (pooling == "attention")

    result = run_cli(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "model.pt")])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "model.pt.json").read_text())
    assert sidecar["resize"] is None and sidecar["scale"]["mpp"] == 0.5 and sidecar["scale"]["tiles"]["stride"] == 24
    if pooling == "attention":  # the exported model takes one image's tiles and pools them itself
        assert "pools them by attention" in sidecar["scale"]["how"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation: still what many deploy
            traced = torch.jit.load(str(tmp_path / "model.pt"))
        grid = tile_map(run, cv2.cvtColor(rescaled, cv2.COLOR_BGR2RGB))
        with torch.no_grad():
            logits, expected = traced(grid.inputs), run.model(grid.inputs, counts=torch.tensor([len(grid.inputs)]))
        assert logits.shape == (1, 2) and torch.allclose(logits, expected, atol=1e-4)
        assert grid.weights is not None and abs(grid.weights.sum() - 1) < 1e-5
        pytest.importorskip("onnxruntime")
        result = run_cli(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "model.onnx")])
        assert result.exit_code == 0, result.output
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
        got = session.run(None, {session.get_inputs()[0].name: grid.inputs.numpy()})[0]
        assert got.shape == (1, 2) and np.allclose(got, expected.numpy(), atol=1e-4)
    with pytest.raises(HistofuseError, match="trained at one scale or on tiles"):
        run_cli(["export", str(run_dir), "--format", "space", "--out", str(tmp_path / "space")])


def test_data_mpp_on_a_dataset_that_does_not_say_its_scale_stops_before_training(tmp_path, tiny_recipe_dict):
    from conftest import write_toml
    from test_run import cli

    tiny_recipe_dict["data"]["mpp"] = 0.5
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    done = cli("run", str(recipe), "-o", str(tmp_path / "runs"))
    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert "data.mpp = 0.5 rescales every image" in text and "mpp option" in text
    assert not (tmp_path / "runs").exists()


def test_a_grid_with_gaps_between_its_tiles_is_refused():
    with pytest.raises(ValueError, match=r"tiles.stride \(300\) is larger than the tile \(224\)"):
        DataConfig(dataset="synthetic", image_size=224, tiles=TilesConfig(stride=300))
    assert DataConfig(dataset="synthetic", image_size=224, tiles=TilesConfig(stride=224)).tiles.stride == 224


def test_tiles_at_each_image_s_own_scale_read_the_decode_cache_whole(tmp_path, two_scales):
    """Without data.mpp the tiles are cut from the image as stored: the cache must not shrink it to resize."""
    from histofuse.data.cache import DecodeCache
    from histofuse.data.decode import decode_image
    from histofuse.data.loading import ImageTable

    _, fine = two_scales
    data = DataConfig(dataset="csv", image_size=64, resize=72, tiles=TilesConfig(min_tissue=0.1))
    options = table_options(data, fine, False, "test")
    assert options["scales"] == [1.0] * len(fine)
    cache = DecodeCache(tmp_path / "cache", data.resize_to)
    identity = lambda rgb: torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # noqa: E731
    cached = ImageTable(fine, ["benign", "malignant"], identity, cache=cache, **options)[0]
    direct = ImageTable(fine, ["benign", "malignant"], identity, **options)[0]
    assert torch.equal(cached["image"], direct["image"]) and cached["tiles"] == direct["tiles"]
    assert np.array_equal(cache.load(fine["path"].iloc[0], 1.0), decode_image(fine["path"].iloc[0]))


def test_training_tiles_follow_the_epoch_sampler_s_seeds(two_scales):
    """The (index, seed) pairs of an epoch give the same tiles again (a resumed run), other seeds other tiles."""
    from histofuse.data.loading import ImageTable
    from histofuse.data.sampling import EpochSampler

    coarse, _ = two_scales
    data = DataConfig(dataset="csv", image_size=48, mpp=0.5, tiles=TilesConfig(min_tissue=0.1))
    identity = lambda rgb: torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # noqa: E731
    table = ImageTable(coarse, ["benign", "malignant"], identity, **table_options(data, coarse, True, "test"))

    def epoch(number: int) -> list[torch.Tensor]:
        sampler = EpochSampler(table.labels, balanced=False, seed=3)
        sampler.set_epoch(number)
        return [table[key]["image"] for key in sampler]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(sorted(first, key=torch.sum), sorted(other, key=torch.sum)))


def test_multi_crop_tta_is_refused_on_a_tiled_run_from_the_command_line_too():
    from histofuse.data.tiles import check_tta

    data = DataConfig(dataset="synthetic", tiles=TilesConfig())
    with pytest.raises(HistofuseError, match="--tta: TTA crops5 cuts crops from one resized image"):
        check_tta(data, "crops5", "--tta")
    check_tta(data, "d4", "--tta")
    check_tta(DataConfig(dataset="synthetic"), "crops5", "--tta")


def test_a_run_says_the_scale_its_dataset_gives():
    from histofuse.data.scanning import describe_scale

    assert describe_scale(pd.DataFrame({"path": ["a", "b", "c"]})) == "scale unknown (3)"
    mixed = pd.DataFrame({"path": ["a", "b", "c", "d"], "mpp": [0.4924, 0.197, 0.4924, None]})
    assert describe_scale(mixed) == "scale 0.197 µm/px (1), 0.4924 µm/px (2), unknown (1)"


def test_breakhis_gives_each_image_the_scale_of_its_magnification_and_of_its_copy(synthetic_root):
    """A tree in the BreaKHis layout read as BreaKHis: the release's scales, and a resized copy's."""
    from histofuse_builtins.breakhis_layout import MPP
    from histofuse_builtins.data_breakhis import scan_breakhis

    release = scan_breakhis(synthetic_root)
    assert (release["mpp"] == release["magnification"].map(MPP)).all()
    copy = scan_breakhis(synthetic_root, width=350)  # resized whole to half the width: twice the tissue per pixel
    assert np.allclose(copy["mpp"], 2 * release["mpp"])


def test_quality_control_scores_images_at_the_run_s_scale(tmp_path, two_scales):
    """Sharpness changes with the scale: with data.mpp an image is scored as the model will see it."""
    from histofuse.data.decode import decode_image
    from histofuse.evaluation.sets import _quality_controlled
    from histofuse.qc import QCThresholds, assess

    frame = pd.concat(two_scales, ignore_index=True)
    for mpp, name in ((None, "as_decoded"), (0.5, "at_run_scale")):
        _quality_controlled(name, frame, QCThresholds(blur=0, min_tissue=0), tmp_path, mpp)
    as_decoded = pd.read_csv(tmp_path / "qc_as_decoded.csv")
    at_run_scale = pd.read_csv(tmp_path / "qc_at_run_scale.csv")
    for i, row in frame.iterrows():
        rgb = decode_image(row["path"])
        assert as_decoded.loc[i, "blur"] == pytest.approx(assess(rgb, QCThresholds())["blur"])
        assert at_run_scale.loc[i, "blur"] == pytest.approx(assess(rescale(rgb, row["mpp"] / 0.5), QCThresholds())["blur"])
    fine = frame["mpp"] == 0.25
    assert (at_run_scale.loc[fine, "blur"] - as_decoded.loc[fine, "blur"]).abs().min() > 1  # scored on other pixels
