"""Reinhard stain normalization: images per second on one thread, and exactness.

Compares, on the same rendered H&E images in the same run:
  - histofuse's `reinhard` normalizer (float32 LAB on OpenCV's 8-bit scale, fused affine);
  - a plain float32 OpenCV implementation (uint8 LAB round trip, per-channel arithmetic);
  - a fused float32 OpenCV implementation with no guards (float LAB, meanStdDev, one cv2.transform, back, one
    convertScaleAbs): the method at the limit of OpenCV, the pace histofuse's guarded normalizer should keep;
  - torchstain's ReinhardNormalizer (numpy backend), installed only in a separate
    environment (see --torchstain-python);
each against a float64 reference of the same algorithm (mean and max absolute difference). Rendered tiles at
BreaKHis and BACH sizes, and the real BreaKHis images of ../shared/realdata where that folder exists.

Rerun:
    python -m venv /tmp/torchstain-env && /tmp/torchstain-env/bin/pip install torchstain numpy opencv-python-headless
    python benchmarks/reinhard.py --torchstain-python /tmp/torchstain-env/bin/python
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from _results import Figures  # noqa: E402

cv2.setNumThreads(1)


def render_images(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    from histofuse_builtins.synthetic_tissue import patient_stain, render_tile

    rng = np.random.default_rng(seed)
    return [render_tile(rng, i % 2 == 1, patient_stain(rng, "b" if i % 3 == 0 else "a"), width, height, 200) for i in range(count)]


def plain_float32(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    src_mean, src_std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    out = (lab - src_mean) / src_std * std.astype(np.float32) + mean.astype(np.float32)
    return cv2.cvtColor(np.clip(out + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


_SCALE, _OFFSET = np.array([255 / 100, 1, 1]), np.array([0, 128, 128])


def fused_float32(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2LAB)
    source_mean, source_std = (v.ravel() for v in cv2.meanStdDev(lab))
    gain = std / (source_std * _SCALE)
    shift = mean - (source_mean * _SCALE + _OFFSET) * gain
    matrix = np.hstack([np.diag(gain), ((gain * _OFFSET + shift - _OFFSET) / _SCALE)[:, None]]).astype(np.float32)
    return cv2.convertScaleAbs(cv2.cvtColor(cv2.transform(lab, matrix), cv2.COLOR_LAB2RGB), alpha=255)


def real_images(limit: int = 40) -> list[np.ndarray]:
    folder = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "breakhis_small"
    paths = sorted(folder.rglob("*.png"))[:limit]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def reference_float64(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).astype(np.float64)
    lab = lab * np.array([255 / 100, 1, 1]) + np.array([0, 128, 128])
    src_mean, src_std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    out = (lab - src_mean) / src_std * std + mean
    out = (out - np.array([0, 128, 128])) * np.array([100 / 255, 1, 1])
    back = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB).astype(np.float64) * 255
    return np.clip(np.round(back), 0, 255)


def timed(fn, images, repeats) -> tuple[list[float], list[np.ndarray]]:
    times, outputs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [fn(img) for img in images]
        times.append(time.perf_counter() - start)
    return times, outputs


def errors(outputs, references) -> tuple[float, float]:
    diffs = [np.abs(o.astype(np.float64) - r) for o, r in zip(outputs, references)]
    return float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs))


def torchstain_run(python: str, images, target, repeats, method: str = "reinhard"):
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "images.npz", *images)
        np.save(Path(tmp) / "target.npy", target)
        worker = Path(__file__).with_name("_torchstain_worker.py")
        subprocess.run(
            [python, str(worker), str(Path(tmp) / "images.npz"), str(Path(tmp) / "target.npy"), str(repeats), str(Path(tmp) / "out.npz"), method],
            check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        )
        data = np.load(Path(tmp) / "out.npz")
        return list(data["times"]), [data[f"o{i}"] for i in range(len(images))]


def stain_benchmark_args(doc: str, repeats: int, images: int) -> argparse.Namespace:
    """The options every stain benchmark takes: repeats, images per size, and torchstain's environment."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--torchstain-python", default=None, help="python of an environment with torchstain")
    return parser.parse_args()


def main() -> None:
    args = stain_benchmark_args(__doc__, repeats=5, images=6)

    from histofuse_builtins.stain_reinhard import Reinhard

    figures = Figures("reinhard")
    print(f"# Reinhard normalization, one thread, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"# median images/s over {args.repeats} repeats (min-max); error vs float64 reference in grey levels\n")
    print(f"{'images':>10} {'implementation':>16} {'images/s':>10} {'min-max':>15} {'x torchstain':>13} {'x plain':>8} "
          f"{'x fused':>8} {'mean err':>9} {'max err':>8}")
    sets = [(f"{w}x{h}", render_images(args.images, w, h), render_images(4, w, h, seed=1)) for w, h in ((700, 460), (2048, 1536))]
    real = real_images()
    if real:
        sets.append((f"real {real[0].shape[1]}x{real[0].shape[0]}", real, real))
    for label, images, target_images in sets:
        histofuse = Reinhard()
        histofuse.fit(target_images)
        mean, std = np.array(histofuse.mean), np.array(histofuse.std)
        references = [reference_float64(img, mean, std) for img in images]
        rows = {
            "histofuse": timed(histofuse.transform, images, args.repeats),
            "plain float32": timed(lambda im: plain_float32(im, mean, std), images, args.repeats),
            "fused float32": timed(lambda im: fused_float32(im, mean, std), images, args.repeats),
        }
        if args.torchstain_python:
            rows["torchstain"] = torchstain_run(args.torchstain_python, images, target_images[0], args.repeats)
        speed = {name: len(images) / np.array(times) for name, (times, _) in rows.items()}
        for name, (times, outputs) in rows.items():
            s = speed[name]
            key = f"{label.split()[0]}.{name.replace(' ', '_')}"  # the real set is "real", whatever its images' size
            median = figures.add(f"{key}.images_per_s", np.median(s), "images/s")
            ratios = {other: f"{figures.add(f'{key}.x_{other.split()[0]}', median / np.median(speed[other]), 'x'):.2f}"
                      for other in ("torchstain", "plain float32", "fused float32") if other in speed}
            mean_err, max_err = errors(outputs, references)
            figures.add(f"{key}.mean_err", mean_err, "grey levels")
            figures.add(f"{key}.max_err", max_err, "grey levels")
            note = "*" if name == "torchstain" else ""
            print(f"{label:>10} {name:>16} {median:10.1f} {s.min():7.1f}-{s.max():<7.1f} {ratios.get('torchstain', 'n/a'):>13} "
                  f"{ratios['plain float32']:>8} {ratios['fused float32']:>8} {mean_err:9.2f} {max_err:8.0f}{note}")
    print("\n* torchstain converts RGB to LAB its own way and fits its target on one image, so part of its")
    print("  difference is a different colour space, not rounding.")
    print("\nrerun: bash benchmarks/run_all.sh reinhard")
    figures.save()


if __name__ == "__main__":
    main()
