import cv2
import numpy as np
import pytest

import histofuse


@pytest.fixture
def reinhard(registry):
    return registry.get("normalizer", "reinhard").build()


def tiles(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(30, 250, (20 + i, 30, 3), dtype=np.uint8) for i in range(n)]


def test_lab_is_on_opencvs_8bit_scale(reinhard):
    image = tiles(1)[0]
    assert np.abs(reinhard._lab(image) - cv2.cvtColor(image, cv2.COLOR_RGB2LAB)).max() < 1.5  # uint8 rounding


def test_streaming_fit_equals_two_pass_statistics(reinhard):
    images = tiles()
    state = reinhard.fit(iter(images))
    lab = np.concatenate([reinhard._lab(im).reshape(-1, 3) for im in images]).astype(np.float64)
    np.testing.assert_allclose(state["mean"], lab.mean(0), rtol=1e-6)
    np.testing.assert_allclose(state["std"], lab.std(0), rtol=1e-6)


def test_transform_before_fit_is_a_clear_error(reinhard):
    with pytest.raises(histofuse.NotFittedError, match="not fitted"):
        reinhard.transform(tiles(1)[0])


def test_an_image_already_at_the_target_barely_changes(reinhard):
    image = tiles(1, seed=3)[0]
    reinhard.fit([image])
    assert np.abs(reinhard.transform(image).astype(int) - image).max() <= 1


def test_flat_tile_comes_back_without_nan_and_state_survives_json(reinhard):
    import json

    reinhard.fit(tiles())
    other = type(reinhard)()
    other.load_state(json.loads(json.dumps(reinhard.state)))
    flat = np.full((8, 8, 3), 255, np.uint8)
    out = other.transform(flat)
    assert out.dtype == np.uint8 and np.isfinite(out).all()
    assert np.array_equal(other.transform(tiles(1)[0]), reinhard.transform(tiles(1)[0]))


def test_an_even_colour_under_sensor_noise_comes_back_unchanged(reinhard):
    reinhard.fit(tiles())
    for colour in ((190, 110, 170), (150, 100, 170), (235, 235, 235)):
        noisy = np.clip(np.asarray(colour) + np.random.default_rng(1).normal(0, 2, (32, 32, 3)), 0, 255).astype(np.uint8)
        # Tolerance 0: identical. Before: its LAB std (1-1.6) passed min_std, so the noise was stretched to the
        # target's spread (RGB std 2 -> 67-75) and the mean colour moved by 38-97 levels.
        assert np.array_equal(reinhard.transform(noisy), noisy), colour
    assert reinhard.unchanged == {"flat (its colour varies no more than sensor noise)": 3}
    textured = np.clip(np.full((32, 32, 3), 170) + np.random.default_rng(2).normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
    assert not np.array_equal(reinhard.transform(textured), textured)  # 12 levels of spread is tissue, not noise


def test_dataset_source_keeps_differences_between_images(registry):
    spec = registry.get("normalizer", "reinhard")
    dark, light = (np.clip(np.random.default_rng(s).normal(m, 25, (32, 32, 3)), 0, 255).astype(np.uint8) for s, m in ((0, 90), (1, 170)))
    per_image = spec.build()
    per_image.fit(tiles())
    a, b = per_image.transform(dark), per_image.transform(light)
    assert abs(a.mean() - b.mean()) < 3  # classic Reinhard: every image ends at the target mean
    per_set = spec.build(source="dataset")
    per_set.fit(tiles())
    with pytest.raises(histofuse.NotFittedError, match="adapt"):
        per_set.transform(dark)
    per_set.adapt([dark, light])
    a, b = per_set.transform(dark), per_set.transform(light)
    assert b.mean() - a.mean() > 40
    assert set(per_set.adapted) == {"mean", "std"} and per_image.adapted is None  # recorded in the set's metrics


def test_tissue_only_statistics_ignore_the_background(registry):
    spec = registry.get("normalizer", "reinhard")
    tissue = np.random.default_rng(0).integers(60, 180, (20, 20, 3), dtype=np.uint8)
    padded = np.full((40, 40, 3), 250, np.uint8)
    padded[:20, :20] = tissue
    all_pixels, tissue_only = spec.build(), spec.build(tissue_only=True)
    fitted, reference = tissue_only.fit([padded]), spec.build().fit([tissue])
    np.testing.assert_allclose(fitted["mean"], reference["mean"], rtol=1e-6)
    np.testing.assert_allclose(fitted["std"], reference["std"], rtol=1e-6)
    assert all_pixels.fit([padded])["mean"][0] > tissue_only.state["mean"][0] + 20


def test_paper_preset_needs_no_fitting(registry):
    normalizer = registry.get("normalizer", "reinhard").build(preset="breakhis_paper")
    assert normalizer.fitted and normalizer.state["mean"] == [180.8, 148.6, 116.5]
    assert normalizer.transform(tiles(1)[0]).shape == tiles(1)[0].shape


def float64_reinhard(rgb: np.ndarray, mean, std) -> np.ndarray:
    """The method in float64, written out: 8-bit-scale LAB statistics, the affine map, back to RGB, rounded."""
    import cv2

    scale, offset = np.array([255 / 100, 1, 1]), np.array([0, 128, 128])
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB).astype(np.float64) * scale + offset
    source_mean, source_std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    mapped = ((lab - source_mean) / source_std * np.asarray(std) + np.asarray(mean) - offset) / scale
    back = cv2.cvtColor(mapped.astype(np.float32), cv2.COLOR_LAB2RGB).astype(np.float64) * 255
    return np.clip(np.round(back), 0, 255)


def test_out_of_gamut_colours_saturate_like_the_float64_method(reinhard):
    """A target far wider than the tile pushes colours past both ends of RGB: they clip to 0 and 255 exactly as the
    float64 method's do, within one grey level everywhere."""
    rng = np.random.default_rng(3)
    tile = np.clip(rng.normal((190, 120, 170), 30, (48, 64, 3)), 0, 255).astype(np.uint8)
    reinhard.load_state({"mean": [140.0, 170.0, 90.0], "std": [80.0, 40.0, 40.0]})
    out = reinhard.transform(tile)
    expected = float64_reinhard(tile, reinhard.mean, reinhard.std)
    assert (expected == 0).sum() > 100 and (expected == 255).sum() > 100  # the case is really out of gamut
    assert np.abs(out.astype(int) - expected).max() <= 1
