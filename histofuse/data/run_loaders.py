"""The loaders of one run: a training loader per phase (its augmentation, its seed) and the validation loader,
sharing the decode cache when the recipe asks for one."""

from __future__ import annotations

from pathlib import Path


def run_loaders(recipe, hooks, classes, frames: dict, table, accelerator):
    """A training-loader factory (one loader per phase and augmentation) and the validation loader."""
    from histofuse.data.eval_loader import make_eval_transform
    from histofuse.data.loading import ImageTable, default_num_workers, make_loader
    from histofuse.data.tiles import image_scales, table_options

    data = recipe.data
    workers = data.num_workers if data.num_workers is not None else default_num_workers()
    magnifications = recipe.model.magnification.values if recipe.model.magnification.enabled else None
    cache = None
    if data.cache:
        from histofuse.data.cache import default_cache_dir, warm_cache

        with accelerator.main_process_first():  # one process builds, the others then read what it wrote
            scales = image_scales(data, table, "data")
            cache = warm_cache(table["path"].tolist(), Path(data.cache_dir or default_cache_dir()), data.resize_to,
                               data.max_image_pixels, scales)

    def make_train_loader(phase_index: int, strength: str):
        phase = recipe.phases[phase_index]
        transform = hooks.make_transforms(
            stage="train", strength=strength, image_size=data.image_size, resize=0 if data.keeps_scale else data.resize_to,
            stain_jitter=phase.stain_jitter,
            stain_jitter_method=phase.stain_jitter_method,
        )
        dataset = ImageTable(
            frames["train"], classes, transform, magnifications=magnifications, max_pixels=data.max_image_pixels, cache=cache,
            **table_options(data, frames["train"], True, "data"),
        )
        balanced = recipe.training.sampler == "balanced"
        # A seed per phase, so phase 2 does not replay phase 1's sample order and augmentations.
        seed = recipe.seed * 1000 + phase_index
        return make_loader(
            dataset, data.batch_size, train=True, balanced=balanced, num_workers=workers, seed=seed, prefetch=data.prefetch
        )

    validation = ImageTable(frames["val"], classes, make_eval_transform(hooks, data), magnifications=magnifications,
                            max_pixels=data.max_image_pixels, cache=cache, **table_options(data, frames["val"], False, "data"))
    val_loader = make_loader(validation, data.eval_batch_size or data.batch_size, train=False, num_workers=workers,
                             prefetch=data.prefetch)
    return make_train_loader, val_loader
