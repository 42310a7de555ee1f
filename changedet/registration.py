"""Image-based fine registration of ``after`` onto ``before``.

Shift convention (``summary.json`` ``registration.shift_px``): ``[dx, dy]`` is the
displacement of a feature in the uncorrected ``after`` relative to ``before``,
``after(x + dx, y + dy) = before(x, y)``. Internally the correction is a 2x3
matrix ``M`` that maps a grid pixel ``(x, y)`` to where it lies in ``after``:
``[x_a, y_a] = M @ [x, y, 1]``.

Method: a coarse phase correlation on decimated images finds large shifts;
then phase correlation (upsampled DFT, Guizar-Sicairos et al. 2008) on a grid
of full-resolution chips, refined by enhanced correlation coefficient
maximisation (ECC, Evangelidis & Psarakis 2008), gives one vector per chip. A
robust vote (median, then the inliers' mean) combines them, and the agreement
between chips and their correlation after correction give a confidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.registration import phase_cross_correlation

from .config import RegisterConfig

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ChipVector:
    """One chip's measured displacement."""

    row: float  # chip centre on the grid
    col: float
    dx: float
    dy: float
    ncc: float  # normalised cross-correlation after correction, -1..1


@dataclass(frozen=True)
class Registration:
    """The result of registration: a correction and how far to trust it."""

    matrix: np.ndarray  # (2, 3) float64, grid pixel -> after pixel
    method: str
    confidence: float
    residual_px: float
    n_tiepoints: int
    chips: tuple[ChipVector, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()

    @property
    def shift_px(self) -> tuple[float, float]:
        return (float(self.matrix[0, 2]), float(self.matrix[1, 2]))

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))

    def to_json(self) -> dict[str, object]:
        dx, dy = self.shift_px
        return {
            "method": self.method,
            "shift_px": [round(dx, 4), round(dy, 4)],
            "rotation_deg": round(self.rotation_deg, 5),
            "residual_px": round(self.residual_px, 4) if np.isfinite(self.residual_px) else None,
            "confidence": round(self.confidence, 4),
            "n_tiepoints": self.n_tiepoints,
        }


def identity() -> Registration:
    """No correction (registration disabled)."""
    return Registration(matrix=translation(0.0, 0.0), method="none", confidence=0.0, residual_px=0.0, n_tiepoints=0)


def translation(dx: float, dy: float) -> np.ndarray:
    """The 2x3 matrix of a pure shift."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _prepare(img: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Fill invalid pixels with the mean, remove the mean and taper the edges."""
    img = np.asarray(img, dtype=np.float64)
    if valid is not None and not valid.all():
        img = img.copy()
        img[~valid] = img[valid].mean() if valid.any() else 0.0
    img = img - img.mean()
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    return img * win


def phase_shift(ref: np.ndarray, tgt: np.ndarray, upsample: int = 100,
                ref_valid: np.ndarray | None = None, tgt_valid: np.ndarray | None = None) -> tuple[float, float]:
    """Subpixel displacement ``(dx, dy)`` of ``tgt`` relative to ``ref`` by phase correlation.

    Parameters
    ----------
    ref, tgt : (h, w) arrays of the same shape.
    upsample : upsampling factor of the DFT peak search (1/upsample px precision).

    Returns
    -------
    (dx, dy) with ``tgt(x + dx, y + dy) = ref(x, y)``.
    """
    if ref.shape != tgt.shape:
        raise ValueError(f"ref and tgt shapes differ: {ref.shape} vs {tgt.shape}")
    shift, _, _ = phase_cross_correlation(_prepare(ref, ref_valid), _prepare(tgt, tgt_valid),
                                          upsample_factor=upsample, normalization="phase")
    # skimage returns the shift that moves tgt onto ref, i.e. minus the displacement.
    return float(-shift[1]), float(-shift[0])


def _tukey(e: np.ndarray, c: float = 4.685) -> np.ndarray:
    scale = 1.4826 * float(np.median(np.abs(e))) + 1e-9
    u = e / (c * scale)
    return np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)


def refine_lk(ref: np.ndarray, tgt: np.ndarray, dx: float, dy: float, valid: np.ndarray | None = None,
              iterations: int = 30, tol: float = 1e-3, margin: int = 6) -> tuple[float, float, float] | None:
    """Refine a displacement by robust Lucas-Kanade with a gain and offset.

    Solves ``tgt(x + d) = a * ref(x) + b`` for ``d`` (and ``a``, ``b``) by
    Gauss-Newton, reweighting pixels with Tukey's biweight so that changed
    objects, clouds and edges do not pull the estimate (Baker & Matthews 2004;
    robust weights after Black & Anandan 1996).

    Returns (dx, dy, inlier share) or None when it did not converge.
    """
    ref = cv2.GaussianBlur(ref.astype(np.float32), (0, 0), 1.0)
    tgt = cv2.GaussianBlur(tgt.astype(np.float32), (0, 0), 1.0)
    h, w = ref.shape
    use = np.zeros((h, w), dtype=bool)
    use[margin:h - margin, margin:w - margin] = True
    if valid is not None:
        use &= cv2.erode(valid.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    if use.sum() < 64:
        return None
    r = ref[use].astype(np.float64)
    weights = np.ones(r.size)
    d = np.array([dx, dy], dtype=np.float64)
    for _ in range(iterations):
        t_img = fourier_shift(tgt, d[0], d[1])
        gx = cv2.Sobel(t_img, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8.0)
        gy = cv2.Sobel(t_img, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8.0)
        t, tx, ty = t_img[use].astype(np.float64), gx[use].astype(np.float64), gy[use].astype(np.float64)
        jac = np.column_stack([tx, ty, -r, -np.ones_like(r)])
        sw = np.sqrt(weights)
        sol, *_ = np.linalg.lstsq(jac * sw[:, None], -t * sw, rcond=None)
        err = t + jac @ sol
        weights = _tukey(err)
        d += sol[:2]
        if not np.all(np.isfinite(d)) or np.abs(d - [dx, dy]).max() > 3:
            return None
        if np.hypot(*sol[:2]) < tol:
            break
    return float(d[0]), float(d[1]), float((weights > 0).mean())


def ncc(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two arrays over ``valid`` pixels."""
    if valid is not None:
        a, b = a[valid], b[valid]
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def chip_boxes(shape: tuple[int, int], chip_px: int, grid: int) -> list[Box]:
    """A ``grid`` x ``grid`` set of chips evenly spread over a (rows, cols) grid.

    Chips shrink to half the short side on small images; duplicates are removed.
    """
    rows, cols = shape
    size = int(min(chip_px, rows // 2, cols // 2))
    size = max(16, size - size % 2)
    boxes: list[Box] = []
    for r in np.linspace(0, max(rows - size, 0), grid):
        for c in np.linspace(0, max(cols - size, 0), grid):
            box = (int(round(r)), int(round(c)), size, size)
            if box not in boxes:
                boxes.append(box)
    return boxes


def chip_is_usable(img: np.ndarray, valid: np.ndarray, min_std: float) -> bool:
    """A chip needs mostly valid pixels and texture relative to its brightness."""
    if valid.mean() < 0.9:
        return False
    vals = img[valid]
    scale = max(float(np.abs(vals).mean()), 1e-6)
    return float(vals.std()) / scale >= min_std


def measure_chip(ref: np.ndarray, tgt: np.ndarray, ref_valid: np.ndarray, tgt_valid: np.ndarray,
                 offset: tuple[int, int], centre: tuple[float, float], upsample: int) -> ChipVector:
    """Measure one chip pair; ``tgt`` was read displaced by the integer ``offset`` (dx, dy)."""
    dx, dy = phase_shift(ref, tgt, upsample, ref_valid, tgt_valid)
    both = ref_valid & tgt_valid
    refined = refine_lk(ref, tgt, dx, dy, both)
    if refined is not None:
        dx, dy, _ = refined
    score = ncc(ref, _shift_image(tgt, dx, dy), both)
    return ChipVector(row=centre[0], col=centre[1], dx=offset[0] + dx, dy=offset[1] + dy, ncc=score)


def fourier_shift(img: np.ndarray, dx: float, dy: float, pad: int = 16) -> np.ndarray:
    """``out(x, y) = img(x + dx, y + dy)`` by a phase ramp, exact for band-limited images.

    The image is mirror-padded first so that the periodic FFT sees no jump at its border.
    """
    p = np.pad(img.astype(np.float64), pad, mode="reflect")
    ky = np.fft.fftfreq(p.shape[0])[:, None]
    kx = np.fft.rfftfreq(p.shape[1])[None, :]
    ramp = np.exp(2j * np.pi * (kx * dx + ky * dy))
    out = np.fft.irfft2(np.fft.rfft2(p) * ramp, s=p.shape)
    return out[pad:-pad, pad:-pad].astype(np.float32)


def _shift_image(img: np.ndarray, dx: float, dy: float, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``out(x, y) = img(x + dx, y + dy)``."""
    m = translation(dx, dy).astype(np.float32)
    return cv2.warpAffine(img.astype(np.float32), m, (img.shape[1], img.shape[0]),
                          flags=interp | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def consensus(chips: list[ChipVector], inlier_px: float = 1.0, min_ncc: float = 0.2) -> Registration:
    """Robust vote over chip vectors: median, then the mean of the inliers.

    Confidence is the product of the inlier share and the inliers' median
    correlation: it is low when chips disagree (an unrelated scene) or when
    the corrected chips still do not correlate (clouds, water, new scene).
    """
    good = [c for c in chips if c.ncc >= min_ncc]
    if not good:
        return Registration(matrix=translation(0.0, 0.0), method="phase-correlation", confidence=0.0,
                            residual_px=float("nan"), n_tiepoints=0, chips=tuple(chips),
                            warnings=("registration: no chip matched; no correction applied",))
    vec = np.array([[c.dx, c.dy] for c in good])
    med = np.median(vec, axis=0)
    dist = np.hypot(*(vec - med).T)
    inl = dist <= inlier_px
    shift = vec[inl].mean(axis=0)
    residual = float(np.sqrt(np.mean(np.sum((vec[inl] - shift) ** 2, axis=1))))
    share = inl.sum() / max(len(chips), 1)
    corr = float(np.median([c.ncc for c, ok in zip(good, inl) if ok]))
    confidence = float(np.clip(share * max(corr, 0.0), 0.0, 1.0))
    return Registration(matrix=translation(float(shift[0]), float(shift[1])), method="phase-correlation",
                        confidence=confidence, residual_px=residual, n_tiepoints=int(inl.sum()),
                        chips=tuple(chips))


# --------------------------------------------------------------------------- applying


def source_box(matrix: np.ndarray, box: Box, margin: int = 3) -> Box:
    """The box of ``after`` needed to resample ``box`` of the grid through ``matrix``."""
    r, c, h, w = box
    xs = np.array([c, c + w, c, c + w], dtype=float)
    ys = np.array([r, r, r + h, r + h], dtype=float)
    xa = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    ya = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    c0, c1 = int(np.floor(xa.min())) - margin, int(np.ceil(xa.max())) + margin
    r0, r1 = int(np.floor(ya.min())) - margin, int(np.ceil(ya.max())) + margin
    return (r0, c0, r1 - r0, c1 - c0)


def resample(src: np.ndarray, src_valid: np.ndarray, src_box: Box, matrix: np.ndarray,
             box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``src`` (read at ``src_box`` of after) onto ``box`` of the grid.

    Parameters
    ----------
    src : (bands, h, w) float32.
    src_valid : (h, w) bool.
    matrix : (2, 3) grid pixel -> after pixel.

    Returns
    -------
    (bands, box_h, box_w) float32 and (box_h, box_w) bool validity.
    """
    r, c, h, w = box
    sr, sc = src_box[0], src_box[1]
    local = matrix.astype(np.float64).copy()
    local[:, 2] = matrix[:, :2] @ np.array([c, r], dtype=float) + matrix[:, 2] - np.array([sc, sr], dtype=float)
    if np.allclose(local, np.round(local)) and np.allclose(local[:, :2], np.eye(2)):
        ox, oy = int(round(local[0, 2])), int(round(local[1, 2]))
        return (np.ascontiguousarray(src[:, oy:oy + h, ox:ox + w]),
                np.ascontiguousarray(src_valid[oy:oy + h, ox:ox + w]))
    m = local.astype(np.float32)
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    out = np.empty((src.shape[0], h, w), dtype=np.float32)
    for i in range(src.shape[0]):
        out[i] = cv2.warpAffine(src[i], m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    vmask = cv2.warpAffine(src_valid.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, vmask > 0.999


def coarse_limit_px(shape: tuple[int, int], params: RegisterConfig) -> float:
    """Largest shift searched, in grid pixels."""
    return params.max_shift_frac * max(shape)
