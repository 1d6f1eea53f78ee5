import numpy as np
import pydantic
import pytest

OPTIONS = dict(patients_per_class=3, images_per_magnification=1, magnifications=[200], width=96, height=64)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_focal_none_writes_the_same_tree_and_marker_as_before(tmp_path):
    from histofuse_builtins.data_synthetic import _MARKER, scan_synthetic

    plain = scan_synthetic(tmp_path / "plain", **OPTIONS)
    unset = scan_synthetic(tmp_path / "unset", focal=None, **OPTIONS)
    assert [read(p) for p in plain["path"]] == [read(p) for p in unset["path"]]
    marker = (tmp_path / "unset" / _MARKER).read_text()
    assert marker == (tmp_path / "plain" / _MARKER).read_text() and "focal" not in marker


def test_focal_mask_covers_its_share_in_one_region():
    import cv2
    from histofuse_builtins.synthetic_tissue import focal_mask

    for seed in range(20):
        mask = focal_mask(np.random.default_rng(seed), 64, 96, 0.25, 2.0)
        assert mask.min() >= 0 and mask.max() <= 1
        assert mask.mean() == pytest.approx(0.25, rel=0.04)
        assert cv2.connectedComponents((mask > 0.5).astype(np.uint8))[0] == 2  # background and one region


def test_focal_redraws_malignant_images_only(tmp_path):
    from histofuse_builtins.data_synthetic import scan_synthetic

    full = scan_synthetic(tmp_path / "full", **OPTIONS)
    focal = scan_synthetic(tmp_path / "focal", focal=0.25, **OPTIONS)
    for label, a, b in zip(full["label"], full["path"], focal["path"]):
        assert (read(a) == read(b)) == (label == "benign"), (label, a)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_focal_outside_zero_one_is_refused_by_name(tmp_path, share):
    from histofuse_builtins.data_synthetic import scan_synthetic

    with pytest.raises(pydantic.ValidationError, match="focal"):
        scan_synthetic(tmp_path, focal=share, **OPTIONS)
    assert not tmp_path.joinpath("histology_slides").exists()
