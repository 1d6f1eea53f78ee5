"""A synthetic BreaKHis: H&E-like tiles in the exact BreaKHis folder and file-name layout.

Generated deterministically from a seed the first time a recipe scans its root, so
the quick start and the tests need no download. Benign and malignant differ in
nuclear morphology (size, shape, arrangement) for the same nuclear area; stains
and each tile's colour statistics vary by patient, magnification and field,
identically for both classes.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import histofuse
from histofuse_builtins.breakhis_layout import MAGNIFICATIONS, Magnifications

_MARKER = ".histofuse-synthetic.json"
# Bump when the renderer changes, so trees written by an older version are regenerated.
_GENERATOR_VERSION = 9
_BENIGN_CODES = ("A", "F", "PT", "TA")
_MALIGNANT_CODES = ("DC", "LC", "MC", "PC")


class SyntheticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    patients_per_class: int = Field(12, ge=3, le=500)
    images_per_magnification: int = Field(3, ge=1, le=100)
    magnifications: Magnifications = Field(default_factory=lambda: list(MAGNIFICATIONS))
    width: int = Field(210, ge=32, le=2048)
    height: int = Field(138, ge=32, le=2048)
    seed: int = Field(0, ge=0)
    site: Literal["a", "b"] = Field("a", description="staining protocol; 'b' is a second lab's colours")
    subtype_patterns: bool = Field(False, description="draw each subtype's architecture (glands, files, mucin, ...)")
    label: Literal["binary", "subtype"] = "binary"
    mpp: float | None = Field(
        None, gt=0.05, le=5, description="draw every image at this µm per pixel (tissue of one physical size) and say so"
    )
    focal: float | None = Field(
        None, gt=0, lt=1, description="share of each malignant image drawn as one malignant region, the rest benign"
    )


def write_synthetic(root: Path, options: SyntheticOptions) -> int:
    """Write the tree under ``root``; return the number of images written."""
    import cv2
    import numpy as np

    from histofuse_builtins.breakhis_layout import image_path
    from histofuse_builtins.synthetic_tissue import patient_stain, render_tile

    # Site "b" draws its own patients: the same seed must not restain the training patients.
    site_key = [] if options.site == "a" else [ord(options.site)]
    rng = np.random.default_rng([options.seed, *site_key])
    ids = rng.choice(np.arange(10000, 40000), size=2 * options.patients_per_class, replace=False)
    written = 0
    for p in range(2 * options.patients_per_class):
        malignant = p % 2 == 1
        codes = _MALIGNANT_CODES if malignant else _BENIGN_CODES
        code = codes[(p // 2) % len(codes)]
        # As in the real release, one patient's id spans two slide folders (e.g. 22549AB, 22549CD).
        slides = [f"{ids[p]}AB", f"{ids[p]}CD"] if p == 1 else [f"{ids[p]}{'AB' if p % 3 else ''}"]
        patient_rng = np.random.default_rng([options.seed, p, *site_key])
        stain = patient_stain(patient_rng, options.site)
        for mag in options.magnifications:
            for seq in range(1, options.images_per_magnification + 1):
                slide = slides[(seq - 1) % len(slides)]
                pattern = code if options.subtype_patterns else None
                tile = render_tile(
                    patient_rng, malignant, stain, options.width, options.height, mag, pattern, options.mpp, options.focal
                )
                path = image_path(root, code, 14, slide, mag, seq)
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
                written += 1
    return written


def ensure_synthetic(root: Path, options: SyntheticOptions) -> None:
    """Generate the tree unless ``root`` already holds one made with the same options."""
    marker = root / _MARKER
    # The label option only changes the table, not the images; trees drawn before mpp and focal keep their marker.
    unmarked = {"label"} | {name for name in ("mpp", "focal") if getattr(options, name) is None}
    wanted = {**options.model_dump(exclude=unmarked), "generator": _GENERATOR_VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise histofuse.DataError(
            f"{root} is not empty and was not written by the synthetic dataset; "
            "choose an empty or new folder for data.root so nothing of yours is overwritten"
        )
    if marker.is_file():
        import shutil

        shutil.rmtree(root / "histology_slides", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    count = write_synthetic(root, options)
    marker.write_text(json.dumps(wanted, indent=2))
    histofuse.log.info("wrote %d synthetic images to %s", count, root)


def scan_synthetic(root, **options):
    from histofuse_builtins.breakhis_layout import scan_tree

    opts = SyntheticOptions(**options)
    root = Path(root)
    try:
        ensure_synthetic(root, opts)
    except OSError as exc:
        raise histofuse.DataError(
            f"cannot write the synthetic dataset to '{root}' ({exc.strerror or exc}); "
            "set data.root to a writable folder"
        ) from None
    table, _ = scan_tree(root)
    table["group"] = table["patient_id"]
    if opts.label == "subtype":
        table["label"] = table["subtype"]
    if opts.mpp is not None:
        table["mpp"] = opts.mpp
    return table


@histofuse.hookimpl
def register_datasets():
    return [
        histofuse.DatasetSpec(
            name="synthetic",
            scan=scan_synthetic,
            description="generated H&E-like tiles in the BreaKHis layout (benign/malignant by nuclear morphology)",
            options=SyntheticOptions,
            source="generated on first use into data.root; `histofuse demo-data DIR` writes one",
            generated=True,
        )
    ]


@histofuse.hookimpl
def register_commands(app):
    import typer

    @app.command("demo-data")
    def demo_data(
        out_dir: Path = typer.Argument(..., help="Folder to write the synthetic BreaKHis-layout dataset into."),
        patients_per_class: int = typer.Option(12, min=3, max=500, help="Patients per class."),
        images_per_magnification: int = typer.Option(3, min=1, max=100, help="Images per patient and magnification."),
        seed: int = typer.Option(0, min=0, help="Random seed; the same seed writes the same images."),
    ) -> None:
        """Write a synthetic dataset in the BreaKHis folder and file-name layout."""
        table = scan_synthetic(
            out_dir, patients_per_class=patients_per_class, images_per_magnification=images_per_magnification, seed=seed
        )
        counts = ", ".join(f"{k} {v}" for k, v in sorted(table["label"].value_counts().items()))
        typer.echo(f"{len(table)} images of {table['group'].nunique()} patients in {out_dir} ({counts})")
