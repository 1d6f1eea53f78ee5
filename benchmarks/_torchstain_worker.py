"""Runs inside the benchmark's own environment (numpy, opencv, torchstain): times torchstain's Reinhard or Macenko.

Usage: python _torchstain_worker.py IMAGES.npz TARGET.npy REPEATS OUT.npz [reinhard|macenko]
"""

import sys
import time

import numpy as np
import torchstain

images = list(np.load(sys.argv[1]).values())
target = np.load(sys.argv[2])
repeats = int(sys.argv[3])
method = sys.argv[5] if len(sys.argv) > 5 else "reinhard"
if method == "macenko":
    normalizer = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
else:
    normalizer = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
normalizer.fit(target)
times, outputs = [], []
for r in range(repeats):
    start = time.perf_counter()
    out = [normalizer.normalize(img) for img in images]
    if method == "macenko":  # (normalized, H, E)
        out = [o[0] for o in out]
    times.append(time.perf_counter() - start)
    outputs = out
np.savez(sys.argv[4], times=np.array(times), **{f"o{i}": o for i, o in enumerate(outputs)})
