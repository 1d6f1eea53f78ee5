"""Stain-matrix normalization shared by Macenko and Vahadane: optical density, tissue pixels, one linear map.

Beer-Lambert: optical density OD = -ln((I + 1) / 256) is linear in the stain
concentrations, OD = C · S with S the 2×3 matrix of unit H and E vectors. A
normalizer estimates S (and the 99th-percentile concentrations) of a source,
and maps it onto a target fitted over many training images:

    OD' = OD · pinv(S_src) · diag(max_tgt / max_src) · S_tgt

which is one 3×3 matrix per image, applied with OpenCV in float32. Tiles that
give no trustworthy estimate (all background, flat, one stain only, too small)
come back unchanged with the reason, never NaN, never raising; ``adapt`` on a
set like that does not raise either: its tiles come back unchanged.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

import histofuse

MIN_TISSUE_PIXELS = 200  # below this, percentiles of a tile's angles are noise
MIN_STAIN_ANGLE = np.deg2rad(3.0)  # two "stains" closer than this are one stain
# Grey levels. Sensor noise and compression move an even colour by a few; stained tissue varies by tens.
MIN_CONTRAST = 6.0

TOO_LITTLE_TISSUE = "too little tissue (background, or a tiny tile)"
FLAT = "flat (its colour varies no more than sensor noise)"
ONE_STAIN = "one stain only (no two stain vectors could be separated)"


def unit_rows(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# Ruifrok and Johnston's H&E optical densities (Anal Quant Cytol Histol 2001): a starting point, and a fallback.
REFERENCE_STAINS = unit_rows([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])


def optical_density(rgb) -> np.ndarray:
    """float32 OD of a uint8 RGB image, 0 for white, about 5.5 for black."""
    import cv2

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    od = cv2.log(cv2.add(rgb, (1.0, 1.0, 1.0, 0.0), dtype=cv2.CV_32F) * np.float32(1 / 256))
    return cv2.multiply(od, (-1.0, -1.0, -1.0, 0.0))


def from_optical_density(od) -> np.ndarray:
    import cv2

    rgb = cv2.exp(cv2.multiply(od, (-1.0, -1.0, -1.0, 0.0))) * np.float32(256) - np.float32(1)
    return cv2.convertScaleAbs(np.clip(rgb, 0, 255))  # rounds to uint8


def tissue_pixels(rgb, beta: float, limit: int, rng: np.random.Generator) -> np.ndarray:
    """OD rows (N, 3) of pixels whose OD norm exceeds ``beta``, at most ``limit``.

    Macenko's original cut (every channel above beta) drops pure-eosin pixels, whose
    red OD is tiny, and tilts the eosin vector by 10-15 degrees on H&E; the norm keeps them.
    """
    od = optical_density(rgb).reshape(-1, 3)
    od = od[np.einsum("ij,ij->i", od, od) > beta * beta]
    if len(od) > limit:
        od = od[rng.choice(len(od), limit, replace=False)]
    return od[np.isfinite(od).all(axis=1)]


def pooled_tissue_pixels(images, beta: float, per_image: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform sample of at most ``limit`` of the tissue pixels of all ``images``, in bounded memory.

    Each pixel draws a random key and the ``limit`` smallest keys are kept (bottom-k reservoir sampling):
    every pixel seen is kept with the same probability, limit / seen, however early its image came.
    """
    rows, keys = [np.zeros((0, 3), np.float32)], [np.zeros(0)]
    held = 0
    for rgb in images:
        od = tissue_pixels(rgb, beta, per_image, rng)
        rows.append(od)
        keys.append(rng.random(len(od)))
        held += len(od)
        if held > 2 * limit:  # compacting only past twice the limit keeps the work linear in the pixels seen
            rows, keys = _smallest_keys(rows, keys, limit)
            held = limit
    return _smallest_keys(rows, keys, limit)[0][0]


def _smallest_keys(rows: list, keys: list, limit: int) -> tuple[list, list]:
    od, key = np.concatenate(rows), np.concatenate(keys)
    if len(key) > limit:
        keep = np.argpartition(key, limit)[:limit]
        od, key = od[keep], key[keep]
    return [od], [key]


def contrast(od: np.ndarray) -> float:
    """Standard deviation of the pixels' colour along its main direction, in grey levels."""
    rgb = np.exp(-np.asarray(od, dtype=np.float64)) * 256
    return float(np.sqrt(max(np.linalg.eigvalsh(np.cov(rgb, rowvar=False))[-1], 0.0)))


def order_and_check(vectors: np.ndarray) -> np.ndarray | None:
    """Unit rows, hematoxylin first (the larger red OD), or None when they do not span two stains."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if not np.isfinite(vectors).all():
        return None
    vectors = np.where(vectors.sum(axis=1, keepdims=True) < 0, -vectors, vectors)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms < 1e-8).any():
        return None
    vectors = vectors / norms
    if vectors[0, 0] < vectors[1, 0]:
        vectors = vectors[::-1]
    cos = float(np.clip(vectors[0] @ vectors[1], -1.0, 1.0))
    if np.arccos(cos) < MIN_STAIN_ANGLE:
        return None
    return np.ascontiguousarray(vectors)


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares concentrations (N, 2) of OD rows (N, 3) for a 2×3 stain matrix."""
    return od @ np.linalg.pinv(stains)


class StainMatrixNormalizer:
    """Fit/adapt/transform shared by the stain-matrix methods; subclasses say how to estimate the matrix."""

    method = "stain-matrix"

    def __init__(
        self, beta: float = 0.15, percentile: float = 99.0, pixels_per_image: int = 20000, max_fit_pixels: int = 2_000_000,
        source: str = "image", seed: int = 0, min_stain_fraction: float = 0.15, min_contrast: float = MIN_CONTRAST,
    ):
        self.beta = beta
        self.percentile = percentile
        self.pixels_per_image = pixels_per_image
        self.max_fit_pixels = max_fit_pixels
        self.source = source
        self.seed = seed
        self.min_stain_fraction = min_stain_fraction
        self.min_contrast = min_contrast
        self.stains: np.ndarray | None = None
        self.max_concentrations: np.ndarray | None = None
        # (stains, max concentrations) of the set adapt() measured, or why it has none.
        self.source_fit: tuple[np.ndarray, np.ndarray] | str | None = None
        self.unchanged: Counter = Counter()

    def estimate(self, od: np.ndarray) -> np.ndarray | str:  # pragma: no cover - abstract
        """The 2×3 stain matrix (H first) of OD rows, or why there is none."""
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        return self.stains is not None

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(self, images) -> dict:
        """Target stain matrix and maximum concentrations from the tissue pixels of many images (one pass)."""
        found = self._fit_many(images)
        if isinstance(found, str):
            raise histofuse.DataError(
                f"{self.method} cannot fit the images it was given to fit: {found}. Give it images of tissue stained "
                f"with both hematoxylin and eosin (tissue is optical density above beta = {self.beta:g})."
            )
        self.stains, self.max_concentrations = found
        return self.state

    def adapt(self, images) -> None:
        """With ``source = "dataset"``: one stain matrix for the whole set about to be transformed.

        A set with nothing to estimate from (one background upload, one stain only) is not an error: every
        tile of it comes back unchanged, counted under the reason.
        """
        if self.source == "dataset":
            found = self._fit_many(images)
            self.source_fit = f"the set: {found}" if isinstance(found, str) else found

    def _fit_many(self, images) -> tuple[np.ndarray, np.ndarray] | str:
        rng = np.random.default_rng(self.seed)
        od = pooled_tissue_pixels(images, self.beta, self.pixels_per_image, self.max_fit_pixels, rng)
        if len(od) < MIN_TISSUE_PIXELS:
            return TOO_LITTLE_TISSUE
        if contrast(od) < self.min_contrast:
            return FLAT
        stains = self.estimate(od)
        if isinstance(stains, str):
            return stains
        return stains, self._max_concentrations(od, stains)

    def _max_concentrations(self, od: np.ndarray, stains: np.ndarray) -> np.ndarray:
        return np.percentile(concentrations(od, stains), self.percentile, axis=0)

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        return {
            "stains": None if self.stains is None else self.stains.tolist(),
            "max_concentrations": None if self.max_concentrations is None else self.max_concentrations.tolist(),
        }

    def load_state(self, state: dict) -> None:
        self.stains = np.asarray(state["stains"], dtype=np.float64)
        self.max_concentrations = np.asarray(state["max_concentrations"], dtype=np.float64)

    @property
    def adapted(self) -> dict | None:
        """What adapt() measured on the set (``source = "dataset"``), for the run's metrics; None otherwise."""
        if self.source != "dataset" or self.source_fit is None:
            return None
        if isinstance(self.source_fit, str):
            return {"unchanged": self.source_fit}
        stains, max_c = self.source_fit
        return {"stains": np.round(stains, 4).tolist(), "max_concentrations": np.round(max_c, 4).tolist()}

    # -- transforming ----------------------------------------------------------------------------------------
    def source_of(self, rgb) -> tuple[np.ndarray, np.ndarray] | str:
        """The tile's (stains, max concentrations), or why it has none worth trusting."""
        if self.source == "dataset":
            if self.source_fit is None:
                raise histofuse.NotFittedError(f'{self.method} with source = "dataset" needs adapt(images) on the set first')
            return self.source_fit
        od = tissue_pixels(rgb, self.beta, self.pixels_per_image, np.random.default_rng(self.seed))
        if len(od) < MIN_TISSUE_PIXELS:
            return TOO_LITTLE_TISSUE
        # Noise on an even colour has stain "directions" too: matching them would invent colour and amplify the noise.
        if contrast(od) < self.min_contrast:
            return FLAT
        # Measured with the target's vectors, a stain far weaker than in training means a (nearly) one-stain tile:
        # its second "stain" direction would be noise, and matching it would invent colour.
        present = np.percentile(concentrations(od, self.stains), self.percentile, axis=0) / self.max_concentrations
        if (present < self.min_stain_fraction).any():
            return f"nearly one stain (a stain below {self.min_stain_fraction:g} of its training-set maximum)"
        stains = self.estimate(od)
        if isinstance(stains, str):
            return stains
        return stains, self._max_concentrations(od, stains)

    def normalize(self, rgb) -> tuple[np.ndarray, str | None]:
        """(normalized tile, None), or (a copy of it, why it was left unchanged).

        Counts nothing, so it is the call for worker processes: their counts would never reach the main one.
        """
        import cv2

        if self.stains is None:
            raise histofuse.NotFittedError(f"{self.method} normalizer is not fitted: call fit(images) or load_state(state) first")
        rgb = np.asarray(rgb)
        source = self.source_of(rgb) if rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size else "not an RGB image"
        if isinstance(source, str):
            return np.array(rgb, copy=True), source
        stains, max_c = source
        if not (max_c > 1e-3).all():
            return np.array(rgb, copy=True), "a stain is absent (its concentrations are all near 0)"
        matrix = np.linalg.pinv(stains) @ np.diag(self.max_concentrations / max_c) @ self.stains
        if not np.isfinite(matrix).all():
            return np.array(rgb, copy=True), "degenerate stain matrix"
        # cv2.transform computes M @ pixel, so the row-vector map OD·matrix is applied as matrix.T.
        od = cv2.transform(optical_density(rgb), matrix.T.astype(np.float32))
        return from_optical_density(od), None

    def transform(self, rgb):
        """The normalized tile; one left unchanged is counted in ``unchanged``."""
        out, reason = self.normalize(rgb)
        if reason is not None:
            count_unchanged(self.unchanged, self.method, reason)
        return out


def count_unchanged(counter: Counter, method: str, reason: str) -> None:
    """Count one tile under ``reason``; logged at the 1st, 2nd, 4th, 8th... time (never a flood)."""
    counter[reason] += 1
    count = counter[reason]
    if count & (count - 1) == 0:
        histofuse.log.warning("%s left %d tile(s) unchanged so far: %s", method, count, reason)
