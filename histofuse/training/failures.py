"""The images a run could not read: each reported once, known to every process, and held to the recipe's limit."""

from __future__ import annotations

from accelerate import Accelerator

from histofuse.errors import DataError
from histofuse.reporting import log


class FailedImages:
    """Keeps ``failed`` ({path: reason}, the training state's own dict, so checkpoints carry it)."""

    def __init__(self, failed: dict[str, str], max_fraction: float, dataset_size: int):
        self.failed, self.max_fraction, self.dataset_size = failed, max_fraction, dataset_size

    def record(self, failed: list[tuple[str, str]]) -> None:
        for path, reason in failed:
            if path not in self.failed:
                self.failed[path] = reason
                log.warning("skipped unreadable image %s: %s", path, reason)

    def merge_across_processes(self, accelerator: Accelerator) -> None:
        """Every process ends the epoch knowing every failure, so all take the same decision."""
        if accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        for part in gather_object([self.failed]):
            for path, reason in part.items():
                self.failed.setdefault(path, reason)

    def check_limit(self) -> None:
        if len(self.failed) > self.max_fraction * self.dataset_size:
            first = next(iter(self.failed.items()))
            raise DataError(
                f"{len(self.failed)} of {self.dataset_size} images could not be decoded, more than "
                f"data.max_failed_fraction = {self.max_fraction:g} (first: {first[0]}: {first[1]}). Fix or remove those "
                "files, or raise the limit."
            )
