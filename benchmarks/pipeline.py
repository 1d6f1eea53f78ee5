"""Training input pipeline: images per second on one core, BreaKHis-sized PNGs (700x460), same augmentations.

  - paper: PIL decode + torchvision transforms (resize 256, rotation/affine, flips, colour jitter, random
    crop 224, to tensor, random erasing), as the paper's code did;
  - histofuse: OpenCV decode + the albumentations "strong" preset at the same sizes;
  - histofuse + cache: the same transforms on images read (memory-mapped) from the decode cache, warm.
Each is timed over the same files in the same run; the ratio is against the paper's pipeline.

Rerun:
    python benchmarks/pipeline.py [--images 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from _results import Figures  # noqa: E402
from reinhard import render_images  # noqa: E402

cv2.setNumThreads(1)
torch.set_num_threads(1)


def paper_pipeline():
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose([
        T.Resize(256), T.RandomRotation(30), T.RandomAffine(0, translate=(0.1, 0.1)), T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(), T.ColorJitter(0.3, 0.3, 0.3, 0.05), T.RandomCrop(224), T.ToTensor(), T.RandomErasing(p=0.3),
    ])
    return lambda path: transform(Image.open(path).convert("RGB"))


def histofuse_pipeline(cache=None):
    from histofuse_builtins.defaults import build_transforms

    from histofuse.data.decode import decode_image

    transform = build_transforms("train", "strong", 224, 256, 0.0)
    read = cache.load if cache is not None else decode_image
    return lambda path: transform(read(path))


def timed(fn, paths, repeats) -> np.ndarray:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        rates.append(len(paths) / (time.perf_counter() - start))
    return np.array(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from histofuse.data.cache import DecodeCache

    folder = Path(tempfile.mkdtemp(prefix="pipeline-"))
    paths = []
    for i, image in enumerate(render_images(args.images, 700, 460)):
        path = folder / f"tile-{i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    cache = DecodeCache(folder / "cache", 256)
    start = time.perf_counter()
    for path in paths:
        cache.load(path)
    build = len(paths) / (time.perf_counter() - start)
    rows = {  # label: (figure key, images/s per repeat)
        "paper (PIL + torchvision)": ("paper", timed(paper_pipeline(), paths, args.repeats)),
        "histofuse (OpenCV + albumentations)": ("histofuse", timed(histofuse_pipeline(), paths, args.repeats)),
        "histofuse + decode cache (warm)": ("cache_warm", timed(histofuse_pipeline(cache), paths, args.repeats)),
    }
    base = np.median(rows["paper (PIL + torchvision)"][1])
    figures = Figures("pipeline")
    print(f"# training input pipeline, one core ({platform.processor() or platform.machine()}), {len(paths)} PNGs of 700x460, "
          f"median of {args.repeats} repeats")
    print(f"{'pipeline':>38} {'images/s':>9} {'min-max':>15} {'x paper':>8}")
    for name, (key, rates) in rows.items():
        median = figures.add(f"{key}.images_per_s", np.median(rates), "images/s")
        ratio = figures.add(f"{key}.x_paper", median / base, "x")
        print(f"{name:>38} {median:9.1f} {rates.min():7.1f}-{rates.max():<7.1f} {ratio:8.2f}")
    figures.add("cache_build.images_per_s", build, "images/s")
    print(f"\nbuilding the cache (decode + resize + write, once): {build:.1f} images/s")
    print("\nrerun: bash benchmarks/run_all.sh pipeline")
    figures.save()


if __name__ == "__main__":
    main()
