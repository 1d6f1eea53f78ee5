"""Experiment trackers (TensorBoard, W&B, MLflow, ...) through Accelerate's tracker classes."""

from __future__ import annotations

from pathlib import Path


# The package each tracker needs, for the message when it is missing.
PACKAGES = {"tensorboard": "tensorboard (or tensorboardX)", "comet_ml": "comet-ml"}


def tracker_problems(names: list[str]) -> list[str]:
    """A tracker whose package is not installed, said before training (Accelerate would drop it with a warning)."""
    if not names:
        return []
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [n for n in names if n not in available]
    if not missing:
        return []
    packages = " ".join(PACKAGES.get(n, n) for n in missing)
    return [f"training.log_with names {', '.join(missing)}, which is not installed here: pip install {packages}, "
            "or remove it from the recipe (history.csv is always written)"]


class Trackers:
    """The recipe's trackers on the main process; every other process logs nothing."""

    def __init__(self, names: list[str], run_dir: Path, project: str, config: dict, is_main_process: bool):
        self.trackers = []
        if not is_main_process:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        for name in dict.fromkeys(names):
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(project, str(run_dir / "trackers")) if cls.requires_logging_directory else cls(project)
            tracker.start()
            tracker.store_init_configuration(flatten(config))
            self.trackers.append(tracker)

    def resume_after(self, epoch: int) -> None:
        """Hide what an interrupted run logged after ``epoch``: the resumed run logs those epochs again.

        A TensorBoard writer opened with ``purge_step`` makes TensorBoard drop the
        older events from that step on; the other trackers keep them (see docs/training.md).
        """
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.finish()
                tracker.init_kwargs["purge_step"] = epoch + 1
                tracker.start()

    def log(self, values: dict, step: int) -> None:
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested recipe -> {"training.weight_decay": 1e-4, ...}; trackers take scalars only."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
