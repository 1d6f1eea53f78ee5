"""Evaluation loaders: the recipe's deterministic transform, and image tables that stain-normalize and say
which tiles the normalizer left unchanged."""

from __future__ import annotations


import pandas as pd


def make_eval_transform(hooks, data, tta: str = "none"):
    """Resize and centre-crop as the recipe's data section says (with data.mpp or data.tiles: crop without
    resizing); no randomness. Multi-crop TTA keeps the whole resized square, from which its views are cut."""
    from histofuse.tta import MULTI_CROP

    size = data.resize_to if tta in MULTI_CROP else data.image_size
    return hooks.make_transforms(
        stage="eval", strength="none", image_size=size, resize=0 if data.keeps_scale else data.resize_to, stain_jitter=0.0,
        stain_jitter_method="hestain",
    )


class NormalizingTable:
    """The samples of an :class:`ImageTable` that stain-normalizes, each saying why its tile was left unchanged.

    The normalizer runs in the loader's worker processes, each on its own copy of it: counts kept there
    never reach the main process. So the reason travels with the sample (``"unchanged"``), and
    :func:`collect_unchanged` gathers it where the batches arrive. A normalizer without ``normalize``
    (a plugin's) just transforms.
    """

    def __init__(self, table: pd.DataFrame, classes: list[str], transform, normalizer, **options):
        from histofuse.data.loading import ImageTable

        self.normalizer = normalizer
        self.reason: str | None = None
        preprocess = self._normalize if hasattr(normalizer, "normalize") else normalizer.transform
        self.images = ImageTable(table, classes, transform, preprocess=preprocess, **options)
        self.labels = self.images.labels

    def __len__(self) -> int:
        return len(self.images)

    def _normalize(self, rgb):
        rgb, self.reason = self.normalizer.normalize(rgb)
        return rgb

    def __getitem__(self, key) -> dict:
        self.reason = None
        sample = self.images[key]
        if self.reason is not None and "error" not in sample:
            sample["unchanged"] = self.reason
        return sample


def collate_unchanged(samples: list[dict]) -> dict:
    """:func:`collate`, keeping each sample's reason for being left unchanged as {dataset index: reason}."""
    from histofuse.data.loading import collate

    batch = collate(samples)
    batch["unchanged"] = {s["index"]: s["unchanged"] for s in samples if "unchanged" in s}
    return batch


def collect_unchanged(loader, reasons: dict):
    """The batches of ``loader``, their tiles left unchanged gathered into ``reasons`` by dataset index
    (an index a distributed sampler repeats is counted once)."""
    for batch in loader:
        reasons.update(batch.pop("unchanged", {}))
        yield batch


def make_eval_loader(frame: pd.DataFrame, classes: list[str], transform, normalizer, batch_size: int, num_workers: int, **options):
    """An evaluation loader over ``frame``; with a ``normalizer``, each tile it leaves unchanged carries its
    reason, which :func:`collect_unchanged` gathers where the batches arrive."""
    from histofuse.data.loading import ImageTable, make_loader

    if normalizer is None:
        dataset = ImageTable(frame, classes, transform, **options)
    else:
        dataset = NormalizingTable(frame, classes, transform, normalizer, **options)
    return make_loader(dataset, batch_size, train=False, num_workers=num_workers, collate_fn=collate_unchanged)
