"""The run directory's layout: every file a run (or a cross-validation's parent folder) holds, named once here.

Everything that reads or writes a run goes through :class:`RunDir`, so the layout can change in one place and a
test can check that no other module spells one of these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # What the run was asked to do and on which images.
    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.toml"

    @property
    def split(self) -> Path:
        return self.path / "split.csv"

    @property
    def folds(self) -> Path:
        return self.path / "folds.csv"

    # Training.
    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def model_info(self) -> Path:
        """Classes, preprocessing and the best epoch of ``weights``."""
        return self.path / "model.json"

    @property
    def finished(self) -> Path:
        return self.path / "finished.json"

    # Evaluation.
    @property
    def evaluation(self) -> Path:
        """What evaluating needs again later: fitted normalizer, baseline, thresholds and temperatures."""
        return self.path / "evaluation.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def predictions(self, name: str) -> Path:
        return self.path / ("predictions.csv" if name == "test" else f"predictions_{name}.csv")

    def validation_predictions(self, tta: str) -> Path:
        return self.path / f"predictions_val_{tta}.csv"

    def qc_scores(self, name: str) -> Path:
        """Each image of an evaluated set with its blur and tissue scores and its QC verdict."""
        return self.path / f"qc_{name}.csv"

    @property
    def stain_comparison(self) -> Path:
        return self.path / "stain_comparison.json"

    # A cross-validation's parent folder.
    @property
    def cv_metrics(self) -> Path:
        return self.path / "cv_metrics.json"

    @property
    def oof_predictions(self) -> Path:
        return self.path / "oof_predictions.csv"

    @property
    def ensemble(self) -> Path:
        return self.path / "ensemble.json"

    # For readers.
    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def model_card(self) -> Path:
        return self.path / "MODEL_CARD.md"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def report_figures(self) -> Path:
        return self.path / "report"

    @property
    def exports(self) -> Path:
        return self.path / "export"
