"""Dataset adapters on generated trees in the real BreaKHis layout."""

from pathlib import Path

import numpy as np
import pytest

from histofuse.errors import DataError


def breakhis_tree(root, names):
    from histofuse_builtins.breakhis_layout import SUBTYPES

    import cv2

    for name in names:
        cls, rest = name[4], name[6:]
        code = rest.split("-")[0]
        year, slide, mag = name.split("-")[1:4]
        label, subtype = SUBTYPES[code]
        folder = root / "histology_slides" / "breast" / label / "SOB" / subtype / f"SOB_{cls}_{code}_{year}-{slide}" / f"{mag}X"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), np.full((460, 700, 3), 200, np.uint8))  # BreaKHis: 700 x 460 RGB PNG
    return root


REAL_NAMES = [
    "SOB_B_A-14-22549AB-40-001.png",
    "SOB_B_A-14-22549CD-100-002.png",
    "SOB_B_A-14-22549G-400-003.png",
    "SOB_B_F-14-9133-200-011.png",
    "SOB_M_DC-14-13412-40-001.png",
    "SOB_M_LC-14-13412-100-005.png",
    "SOB_M_MC-14-13418DE-400-012.png",
    "SOB_M_PC-14-9146-200-021.png",
]


def test_breakhis_reads_every_field_and_groups_shared_ids_together(tmp_path):
    from histofuse_builtins.data_breakhis import scan_breakhis

    table = scan_breakhis(breakhis_tree(tmp_path / "BreaKHis_v1", REAL_NAMES))
    table.index = [Path(p).name for p in table["path"]]
    row = table.loc["SOB_B_A-14-22549CD-100-002.png"]
    assert (row["label"], row["subtype"], row["magnification"], row["slide"], row["group"], row["year"]) == (
        "benign", "adenosis", 100, "22549CD", "22549", 14,
    )
    assert table.loc[[n for n in REAL_NAMES if "22549" in n], "group"].nunique() == 1
    assert table.loc[[n for n in REAL_NAMES if "13412" in n], "group"].nunique() == 1  # ductal and lobular share it
    assert set(table["label"]) == {"benign", "malignant"}


def test_breakhis_options_filter_and_relabel(tmp_path):
    from histofuse_builtins.data_breakhis import scan_breakhis

    root = breakhis_tree(tmp_path, REAL_NAMES)
    table = scan_breakhis(root, magnifications=[40], label="subtype", group_by="slide")
    assert sorted(table["label"]) == ["adenosis", "ductal_carcinoma"]
    assert sorted(table["group"]) == ["13412", "22549AB"]


def test_breakhis_reads_a_flat_folder_and_reports_unparsed_names(tmp_path, caplog):
    import cv2

    from histofuse_builtins.data_breakhis import scan_breakhis

    for name in REAL_NAMES[:3] + ["thumbnail.png", "SOB_B_XX-14-1-40-001.png"]:
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4, 3), np.uint8))
    table = scan_breakhis(tmp_path)
    assert len(table) == 3
    assert "left out 2 PNG file(s)" in caplog.text and "thumbnail.png" in caplog.text


def test_breakhis_missing_or_empty_root_says_what_was_searched(tmp_path):
    from histofuse_builtins.data_breakhis import scan_breakhis

    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_breakhis(tmp_path / "nowhere")
    with pytest.raises(DataError, match=f"no BreaKHis images found under {tmp_path}"):
        scan_breakhis(tmp_path)


def test_synthetic_tree_follows_the_breakhis_scheme_exactly(synthetic_root):
    from histofuse_builtins.breakhis_layout import parse_name

    paths = sorted(p.relative_to(synthetic_root) for p in synthetic_root.rglob("*.png"))
    assert len(paths) == 2 * 4 * 4  # classes x patients x magnifications
    for path in paths:
        parts = path.parts
        fields = parse_name(parts[-1])
        assert fields is not None
        assert parts[:4] == ("histology_slides", "breast", fields["label"], "SOB")
        assert parts[4] == fields["subtype"]
        assert parts[5].startswith(f"SOB_{parts[-1][4]}_") and parts[5].endswith(fields["slide"])
        assert parts[6] == f"{fields['magnification']}X"


def test_synthetic_is_deterministic_and_regenerates_when_options_change(tmp_path):
    from histofuse_builtins.data_synthetic import scan_synthetic

    options = dict(patients_per_class=3, images_per_magnification=1, magnifications=[40], width=48, height=32)
    a = scan_synthetic(tmp_path / "a", **options)
    b = scan_synthetic(tmp_path / "b", **options)
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert [read(p) for p in a["path"]] == [read(p) for p in b["path"]]
    c = scan_synthetic(tmp_path / "a", **{**options, "seed": 1})
    assert [read(p) for p in c["path"]] != [read(p) for p in b["path"]]


def test_synthetic_refuses_to_write_into_a_foreign_folder(tmp_path):
    from histofuse_builtins.data_synthetic import scan_synthetic

    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty and was not written by the synthetic dataset"):
        scan_synthetic(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_synthetic_classes_differ_in_nuclei_not_in_colour_statistics(tmp_path):
    """The colour-only baseline's six LAB numbers overlap between classes; the size of nuclei does not."""
    import cv2
    from histofuse_builtins.data_synthetic import scan_synthetic

    from histofuse.color_baseline import lab_stats
    from histofuse.data.decode import decode_image

    table = scan_synthetic(tmp_path, patients_per_class=6, images_per_magnification=2, magnifications=[200])
    colour, nuclear_size = {"benign": [], "malignant": []}, {"benign": [], "malignant": []}
    for path, label in zip(table["path"], table["label"]):
        rgb = decode_image(path)
        colour[label].append(lab_stats(rgb))
        lightness = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)
        # Nuclei are the darkest pixels; eroded, so that touching nuclei count apart.
        dark = cv2.erode((lightness < lightness.mean() - lightness.std()).astype(np.uint8), np.ones((2, 2), np.uint8))
        areas = cv2.connectedComponentsWithStats(dark)[2][1:, cv2.CC_STAT_AREA]
        nuclear_size[label].append(np.median(areas[areas >= 4]))
    assert min(nuclear_size["malignant"]) > 2 * max(nuclear_size["benign"])  # measured: 89 against 35.5 pixels
    benign, malignant = np.array(colour["benign"]), np.array(colour["malignant"])
    assert (benign.min(0) < malignant.max(0)).all() and (malignant.min(0) < benign.max(0)).all()


def test_synthetic_subtypes_carry_their_own_architecture_and_label(tmp_path):
    from histofuse_builtins.data_synthetic import scan_synthetic

    options = dict(patients_per_class=4, images_per_magnification=1, magnifications=[200], width=96, height=64)
    plain = scan_synthetic(tmp_path / "plain", **options)
    patterned = scan_synthetic(tmp_path / "patterned", subtype_patterns=True, label="subtype", **options)
    assert sorted(patterned["label"].unique()) == sorted(plain["subtype"].unique())
    assert set(plain["label"]) == {"benign", "malignant"}
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert all(read(a) != read(b) for a, b in zip(plain["path"], patterned["path"]))
