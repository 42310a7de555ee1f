"""Image-based fine registration of ``after`` onto ``before``.

Shift convention (``summary.json`` ``registration.shift_px``): ``[dx, dy]`` is the
displacement of a feature in the uncorrected ``after`` relative to ``before``,
``after(x + dx, y + dy) = before(x, y)``. Internally the correction is a 2x3
matrix ``M`` that maps a grid pixel ``(x, y)`` to where it lies in ``after``:
``[x_a, y_a] = M @ [x, y, 1]``.

Method: a coarse phase correlation on decimated images finds large shifts;
then phase correlation on a grid of full-resolution chips gives one tie point
per chip, and a robust fit (a shift, or a similarity or affine transform when the
tie points vary systematically) combines them. A second pass starts every chip at that
fit's prediction and refines it by robust Lucas-Kanade (Fourier-shifted chips,
gain and offset, Tukey weights; phase correlation with an upsampled DFT,
Guizar-Sicairos et al. 2008, only where it fails), and held-back tie points
give an honest residual. Optionally a smooth local
displacement field is interpolated from a denser tie-point grid, outliers
rejected. The share of chips that agree and their correlation after correction
give a confidence (AROSICS-style: a poor match is reported, not silently used).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from . import observability as obs
from .config import ObserveConfig, RegisterConfig

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
    """The result of registration: a correction and how far to trust it.

    ``matrix`` maps a grid pixel (x, y) to after: ``[x_a, y_a] = matrix @ [x, y, 1]``;
    ``field``, when present, adds a smooth local displacement (dx, dy) sampled every
    ``field_step_px`` pixels of the grid.
    """

    matrix: np.ndarray  # (2, 3) float64
    method: str
    confidence: float
    residual_px: float
    n_tiepoints: int
    chips: tuple[ChipVector, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()
    centre: tuple[float, float] = (0.0, 0.0)  # (x, y) where shift_px is reported: the grid centre
    field: np.ndarray | None = None  # (2, gh, gw) float32
    field_step_px: int = 0
    inliers: tuple[bool, ...] = ()
    held_back: tuple[bool, ...] = ()

    @property
    def shift_px(self) -> tuple[float, float]:
        """Displacement at the grid centre (for a pure shift: everywhere)."""
        cx, cy = self.centre
        x, y = self.matrix @ np.array([cx, cy, 1.0])
        return (float(x - cx), float(y - cy))

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def with_matrix(self, matrix: np.ndarray, method: str) -> Registration:
        return replace(self, matrix=matrix, method=method, field=None, field_step_px=0)

    def to_json(self) -> dict[str, object]:
        dx, dy = self.shift_px
        out: dict[str, object] = {
            "method": self.method,
            "shift_px": [round(dx, 4), round(dy, 4)],
            "rotation_deg": round(self.rotation_deg, 5),
            "scale": round(self.scale, 7),
            "matrix": [[round(float(v), 8) for v in row] for row in self.matrix],
            "residual_px": round(self.residual_px, 4) if np.isfinite(self.residual_px) else None,
            "confidence": round(self.confidence, 4),
            "n_tiepoints": self.n_tiepoints,
        }
        if self.field is not None:
            mag = np.hypot(self.field[0], self.field[1])
            out["local_field"] = {"step_px": self.field_step_px, "max_px": round(float(mag.max()), 4),
                                  "mean_px": round(float(mag.mean()), 4)}
        return out


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


def phase_peak(ref: np.ndarray, tgt: np.ndarray, ref_valid: np.ndarray | None = None,
               tgt_valid: np.ndarray | None = None) -> tuple[float, float]:
    """A quick displacement ``(dx, dy)`` of ``tgt`` relative to ``ref``: phase correlation, parabolic peak.

    Same convention as :func:`phase_shift`; precise to about a tenth of a pixel,
    which is all a start for :func:`refine_lk` needs, at the cost of two FFTs and
    no upsampled DFT.
    """
    if ref.shape != tgt.shape:
        raise ValueError(f"ref and tgt shapes differ: {ref.shape} vs {tgt.shape}")
    cross = np.fft.rfft2(_prepare(ref, ref_valid)) * np.conj(np.fft.rfft2(_prepare(tgt, tgt_valid)))
    corr = np.fft.irfft2(cross / np.maximum(np.abs(cross), 1e-12), s=ref.shape)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = corr.shape

    def vertex(m: float, c: float, p: float) -> float:
        den = m - 2 * c + p
        return float(np.clip(0.5 * (m - p) / den, -0.5, 0.5)) if den < 0 else 0.0

    sy = iy + vertex(corr[iy - 1, ix], corr[iy, ix], corr[(iy + 1) % h, ix])
    sx = ix + vertex(corr[iy, ix - 1], corr[iy, ix], corr[iy, (ix + 1) % w])
    sy = sy - h if sy > h / 2 else sy
    sx = sx - w if sx > w / 2 else sx
    # the peak is the shift that moves tgt onto ref, i.e. minus the displacement
    return float(-sx), float(-sy)


def _tukey(e: np.ndarray, scale: float, c: float = 4.685) -> np.ndarray:
    """Tukey's biweight of residuals ``e`` for a robust ``scale``."""
    u = e / (c * scale)
    return np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)


def _robust_scale(e: np.ndarray) -> float:
    """1.4826 x the median absolute residual (the MAD about zero)."""
    return 1.4826 * float(np.median(np.abs(e))) + 1e-9


class _FourierShifter:
    """Repeated subpixel shifts of one image: its padded spectrum is computed once.

    ``shifter(dx, dy)`` equals :func:`fourier_shift` ``(img, dx, dy)`` but costs one
    inverse FFT instead of two.
    """

    def __init__(self, img: np.ndarray, pad: int = 16) -> None:
        p = np.pad(img.astype(np.float64), pad, mode="reflect")
        self.pad, self.shape = pad, p.shape
        self.spectrum = np.fft.rfft2(p)
        self.ky = 2j * np.pi * np.fft.fftfreq(p.shape[0])[:, None]
        self.kx = 2j * np.pi * np.fft.rfftfreq(p.shape[1])[None, :]

    def __call__(self, dx: float, dy: float) -> np.ndarray:
        ramp = np.exp(self.kx * dx) * np.exp(self.ky * dy)  # separable: two short exp, one outer product
        out = np.fft.irfft2(self.spectrum * ramp, s=self.shape)
        k = self.pad
        return out[k:-k, k:-k]


def refine_lk(ref: np.ndarray, tgt: np.ndarray, dx: float, dy: float, valid: np.ndarray | None = None,
              iterations: int = 12, tol: float = 1e-3, margin: int = 6,
              scale_iterations: int = 3) -> tuple[float, float, float] | None:
    """Refine a displacement by robust Lucas-Kanade with a gain and offset.

    Solves ``tgt(x + d) = a * ref(x) + b`` for ``d`` (and ``a``, ``b``) by
    Gauss-Newton, reweighting pixels with Tukey's biweight so that changed
    objects, clouds and edges do not pull the estimate (Baker & Matthews 2004;
    robust weights after Black & Anandan 1996).

    Parameters
    ----------
    ref, tgt : (h, w) arrays of the same shape.
    dx, dy : starting displacement, px, in the convention of :func:`phase_shift`.
    valid : (h, w) bool, pixels valid in both.
    iterations : most Gauss-Newton steps.
    tol : stop when a step moves the displacement by less than this, px.
    margin : border left out, px (the shifted target wraps there).
    scale_iterations : the robust scale is re-estimated during the first steps only.

    Returns
    -------
    (dx, dy, inlier share), or None when it diverged (moved more than 3 px from
    the start) or too few pixels are usable.

    Notes
    -----
    Forward-additive Gauss-Newton with the shifted target's own gradient (Sobel).
    The target's spectrum is kept, so a step costs one inverse FFT (the Fourier
    shift is exact for band-limited images and adds no interpolation bias), two
    Sobel filters and a 4x4 solve of the weighted normal equations. Freezing the
    robust scale after ``scale_iterations`` steps makes the reweighting a fixed
    M-estimator, which settles instead of creeping by a thousandth of a pixel a
    step; on a well-matched chip it stops in 3-7 steps. (A Jacobian taken once
    from the reference, ``a * grad(ref)``, would save the Sobel filters but its
    steps overshoot when the gain estimate shrinks on poorly correlated chips.)
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
    jac = np.empty((r.size, 4))
    jac[:, 2], jac[:, 3] = -r, -1.0
    shifter = _FourierShifter(tgt)
    weights = np.ones(r.size)
    scale = 0.0
    d = np.array([dx, dy], dtype=np.float64)
    for it in range(iterations):
        t_img = shifter(d[0], d[1]).astype(np.float32)
        gx = cv2.Sobel(t_img, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8.0)
        gy = cv2.Sobel(t_img, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8.0)
        t = t_img[use].astype(np.float64)
        jac[:, 0], jac[:, 1] = gx[use], gy[use]
        jw = jac * weights[:, None]
        try:
            sol = np.linalg.solve(jw.T @ jac, -(jw.T @ t))
        except np.linalg.LinAlgError:
            return None
        err = t + jac @ sol
        if it < scale_iterations:
            scale = _robust_scale(err)
        weights = _tukey(err, scale)
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


def measure_residual(ref: np.ndarray, tgt: np.ndarray, ref_valid: np.ndarray, tgt_valid: np.ndarray,
                     upsample: int, init: tuple[float, float] | None = None,
                     refine: bool = True) -> tuple[float, float, float]:
    """Displacement (dx, dy) of a chip of after relative to before, and their correlation after correction.

    With ``refine`` False the phase-correlation peak alone is returned (a tenth of a
    pixel; enough for a first model). Without ``init`` phase correlation finds the start; with it (a model's prediction)
    robust Lucas-Kanade starts there, falling back to phase correlation if it fails.
    Lucas-Kanade only needs a start within its basin, so that phase correlation
    takes the parabolic peak (:func:`phase_peak`); the upsampled DFT is spent only
    when Lucas-Kanade fails and the phase correlation is the answer.
    The target is never resampled before measuring: interpolation kernels bias
    subpixel positions by a few hundredths of a pixel.
    """
    both = ref_valid & tgt_valid
    if not refine:  # a first look: phase correlation alone, a tenth of a pixel
        dx, dy = phase_peak(ref, tgt, ref_valid, tgt_valid)
        return dx, dy, ncc(ref, _shift_image(tgt, dx, dy), both)
    refined = refine_lk(ref, tgt, init[0], init[1], both) if init is not None else None
    if refined is None:
        dx, dy = phase_peak(ref, tgt, ref_valid, tgt_valid)
        refined = refine_lk(ref, tgt, dx, dy, both)
        if refined is None:
            dx, dy = phase_shift(ref, tgt, upsample, ref_valid, tgt_valid)
            refined = (dx, dy, 0.0)
    dx, dy, _ = refined
    return dx, dy, ncc(ref, _shift_image(tgt, dx, dy), both)


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


def fit_translation(p: np.ndarray, q: np.ndarray, inlier_px: float, iterations: int = 10,
                    info: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Robust shift from tie points ``p`` (before) -> ``q`` (after).

    A median vote gates the points within ``inlier_px``; among those a Tukey-weighted
    mean (scale from their spread, at least 0.05 px) discounts the sub-pixel outliers
    a plain mean would average in (chips on water, moving ships, changed ground).
    With ``info`` ((n, 2, 2), see :func:`shift_information`) each point counts by the
    precision of its two components (a generalised least-squares mean) and the Tukey
    weights see its residual in those units.
    """
    d = q - p
    med = np.median(d, axis=0)
    w = (np.hypot(*(d - med).T) <= inlier_px).astype(float)
    t = med
    for _ in range(iterations):
        if w.sum() == 0:
            break
        t = _weighted_mean(d, w, info)
        err = np.hypot(*(d - t).T)
        gate = err <= inlier_px
        if not gate.any():
            break
        white = _whitened(d - t, info)
        scale = max(1.4826 * float(np.median(white[gate])), 0.05)
        w = np.where(gate, _tukey(white, scale), 0.0)
    inl = np.hypot(*(d - t).T) <= inlier_px
    return translation(float(t[0]), float(t[1])), inl


def _weighted_mean(d: np.ndarray, w: np.ndarray, info: np.ndarray | None) -> np.ndarray:
    if info is None:
        return (d * w[:, None]).sum(axis=0) / w.sum()
    wi = info * w[:, None, None]
    return np.linalg.solve(wi.sum(axis=0), np.einsum("nij,nj->i", wi, d))


def _whitened(e: np.ndarray, info: np.ndarray | None) -> np.ndarray:
    """Length of each (n, 2) residual in units of its point's precision (plain length without ``info``)."""
    if info is None:
        return np.hypot(*e.T)
    return np.sqrt(np.maximum(np.einsum("ni,nij,nj->n", e, info, e), 0.0))


def shift_information(img: np.ndarray, valid: np.ndarray | None = None, max_anisotropy: float = 50.0) -> np.ndarray:
    """How well a chip fixes each direction of its shift: the shape of its gradients' 2x2 moment matrix.

    Parameters
    ----------
    img : (h, w) the chip (of before).
    valid : (h, w) bool, pixels that take part.
    max_anisotropy : the weak direction keeps at least this fraction's inverse of the strong one's
        precision, so that a chip of one straight edge still counts a little along it.

    Returns
    -------
    (2, 2) float64, symmetric, trace 2: the identity for isotropic texture; for a chip whose
    texture is one road, near zero along the road (the aperture problem: Lucas-Kanade and phase
    correlation both measure a shift across an edge much better than along it).

    Notes
    -----
    The gradients are taken as :func:`refine_lk` takes them (Gaussian blur of 1 px, Sobel). Only
    the shape is kept: how much a chip counts overall is the robust fit's business (Tukey weights,
    the inlier gate), how it counts by direction is this matrix's.
    """
    g = cv2.GaussianBlur(np.asarray(img, np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    use = np.ones(g.shape, bool) if valid is None else valid
    gx, gy = gx[use].astype(np.float64), gy[use].astype(np.float64)
    # elementwise sums, not BLAS dot products: a threaded BLAS costs tens of ms a call on a busy machine
    sxy = float(np.sum(gx * gy))
    moments = np.array([[float(np.sum(gx * gx)), sxy], [sxy, float(np.sum(gy * gy))]])
    vals, vecs = np.linalg.eigh(moments)
    if not np.isfinite(vals).all() or vals[1] <= 0:
        return np.eye(2)
    vals = np.maximum(vals, vals[1] / max_anisotropy)
    shaped = (vecs * vals) @ vecs.T
    return 2.0 * shaped / np.trace(shaped)


def fit_affine(p: np.ndarray, q: np.ndarray, inlier_px: float, iterations: int = 10,
               info: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Robust affine from tie points: start from the shift's inliers, then Tukey-weighted least squares."""
    return _fit_linear("affine", p, q, inlier_px, iterations, info)


def _param_rows(kind: str, pts: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(n, 2, k) rows of the linear model of the displacement at ``pts``: k = 4 (similarity) or 6 (affine).

    Similarity parameters ``(a, b, tx, ty)``: ``dx = a x - b y + tx``, ``dy = b x + a y + ty`` about
    ``centre``; affine parameters: the two rows of the 2x3 matrix minus the identity.
    """
    n = len(pts)
    rows = np.zeros((n, 2, 4 if kind == "similarity" else 6))
    if kind == "similarity":
        x, y = (pts - centre).T
        rows[:, 0, 0], rows[:, 0, 1], rows[:, 0, 2] = x, -y, 1.0
        rows[:, 1, 0], rows[:, 1, 1], rows[:, 1, 3] = y, x, 1.0
    else:
        design = np.column_stack([pts, np.ones(n)])
        rows[:, 0, :3], rows[:, 1, 3:] = design, design
    return rows


def _matrix_of(kind: str, theta: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the displacement parameters of :func:`_param_rows`."""
    if kind != "similarity":
        return np.eye(2, 3) + theta.reshape(2, 3)
    a, b, tx, ty = theta
    lin = np.array([[1.0 + a, -b], [b, 1.0 + a]])
    return np.column_stack([lin, np.array([tx, ty]) + centre - lin @ centre])


def fit_similarity(p: np.ndarray, q: np.ndarray, inlier_px: float, iterations: int = 10,
                   info: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Robust similarity (shift, rotation, isotropic scale) from tie points ``p`` (before) -> ``q`` (after).

    Starts from the shift's inliers, then Tukey-weighted least squares of the displacements, as
    :func:`fit_affine`; four parameters instead of six, so the corners it extrapolates to carry
    less of the tie points' noise (a rotation is measured from both components of every point).
    """
    return _fit_linear("similarity", p, q, inlier_px, iterations, info)


def _fit_linear(kind: str, p: np.ndarray, q: np.ndarray, inlier_px: float, iterations: int,
                info: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Iteratively reweighted (generalised, with ``info``) least squares of a similarity or affine."""
    m, inl = fit_translation(p, q, inlier_px, info=info)
    n, k = len(p), 4 if kind == "similarity" else 6
    centre = p.mean(axis=0)
    rows = _param_rows(kind, p, centre)
    precision = np.broadcast_to(np.eye(2), (n, 2, 2)) if info is None else info
    design = np.column_stack([p, np.ones(n)])
    w = inl.astype(float)
    for _ in range(iterations):
        if w.sum() < k:
            break
        wi = precision * w[:, None, None]
        normal = np.einsum("nai,nab,nbj->ij", rows, wi, rows)
        try:
            theta = np.linalg.solve(normal, np.einsum("nai,nab,nb->i", rows, wi, q - p))
        except np.linalg.LinAlgError:
            break
        m = _matrix_of(kind, theta, centre)
        e = design @ m.T - q
        white = _whitened(e, info)
        scale = max(1.4826 * float(np.median(white[w > 0])), 0.05)
        w = _tukey(white, scale)
    inl = np.hypot(*(design @ m.T - q).T) <= inlier_px
    return m, inl


def _rms(p: np.ndarray, q: np.ndarray, m: np.ndarray, sel: np.ndarray) -> float:
    if not sel.any():
        return float("nan")
    e = np.column_stack([p, np.ones(len(p))]) @ m.T - q
    return float(np.sqrt(np.mean(np.sum(e[sel] ** 2, axis=1))))


def _truncated_loss(p: np.ndarray, q: np.ndarray, m: np.ndarray, inlier_px: float) -> float:
    """Sum of squared errors, each at most ``inlier_px`` squared: residuals and outliers in one number."""
    e = np.column_stack([p, np.ones(len(p))]) @ m.T - q
    return float(np.minimum(np.sum(e * e, axis=1), inlier_px**2).sum())


_FITS = {"similarity": fit_similarity, "affine": fit_affine}


def fit_model(p: np.ndarray, q: np.ndarray, kind: str, inlier_px: float = 1.0,
              info: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Fit ``translation``, ``similarity``, ``affine`` or, with ``auto``, the simplest the points ask for.

    ``auto`` climbs from a shift to a similarity (rotation, isotropic scale) to an affine (shear,
    anisotropic scale), taking each step only when the bigger model fits at least as well under
    a loss truncated at ``inlier_px`` (so it does not buy a better fit by dropping points) and
    explains the tie points clearly better: RMS 1.5x lower and at least 0.03 px less, or a
    difference at the corners beyond its own uncertainty (:func:`affine_is_significant`).
    A bigger model needs at least 6 inliers spread over two dimensions. Noise alone never buys a
    rotation, and a rotation alone never buys the shear terms, whose noise the corners would carry.
    With ``info`` ((n, 2, 2), :func:`shift_information`) every fit weighs each tie point's two
    components by their precision.
    """
    mt, it = fit_translation(p, q, inlier_px, info=info)
    if kind == "translation" or len(p) < 6:
        return mt, it, "translation"
    best = (mt, it, "translation")
    for bigger in ("similarity", "affine"):
        if kind not in ("auto", bigger):
            continue
        mb, ib = _FITS[bigger](p, q, inlier_px, info=info)
        spread = np.linalg.svd(p[ib] - p[ib].mean(axis=0), compute_uv=False) if ib.sum() >= 6 else np.zeros(2)
        if spread.size < 2 or spread[-1] < 1e-6:
            continue
        if kind == bigger:
            return mb, ib, bigger
        m, inl, name = best
        both = inl & ib
        rs, rb = _rms(p, q, m, both), _rms(p, q, mb, both)
        if _truncated_loss(p, q, mb, inlier_px) <= _truncated_loss(p, q, m, inlier_px) and (
                (rs > 1.5 * rb and rs - rb > 0.03) or affine_is_significant(p[ib], q[ib], mb, m, kind=bigger)):
            best = (mb, ib, bigger)
    return best


def affine_is_significant(p: np.ndarray, q: np.ndarray, ma: np.ndarray, mt: np.ndarray, k: float = 4.0,
                          min_px: float = 0.05, kind: str = "affine") -> bool:
    """Whether a fit ``ma`` differs from a simpler one ``mt`` by more than its own uncertainty where it matters.

    At the corners of the tie points' bounding box the two models' predictions differ by ``delta``;
    ``ma``'s prediction there (a ``kind`` model, ``affine`` or ``similarity``) has a standard error
    ``sigma * sqrt(leverage + 1/n)`` (``sigma`` the robust spread of its residuals). It is
    significant when ``|delta|`` exceeds ``k`` standard errors and ``min_px``: a rotation of a few
    hundredths of a degree moves a large tile's corners by tenths of a pixel, which the RMS of
    chips near the centre hides, while noise alone stays within the bound.
    """
    n = len(p)
    if n < 6:
        return False
    e = np.column_stack([p, np.ones(n)]) @ ma.T - q
    sigma = max(1.4826 * float(np.median(np.abs(e))), 0.005)
    centre = p.mean(axis=0)
    rows = _param_rows(kind, p, centre).reshape(n * 2, -1)
    try:
        inv = np.linalg.inv(rows.T @ rows)
    except np.linalg.LinAlgError:
        return False
    (x0, y0), (x1, y1) = p.min(axis=0), p.max(axis=0)
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], float)
    at = _param_rows(kind, corners, centre)
    leverage = np.einsum("cki,ij,ckj->ck", at, inv, at).max(axis=1)  # the less certain component
    delta = np.hypot(*(np.column_stack([corners, np.ones(4)]) @ (ma - mt).T).T)
    se = sigma * np.sqrt(leverage + 1.0 / n)
    return bool(np.any((delta > k * se) & (delta > min_px)))


def confidence_of(ncc_values: np.ndarray, inliers: np.ndarray, n_chips: int) -> float:
    """Share of chips that agree with the model times their median correlation after correction.

    Low when chips disagree (an unrelated scene) or when corrected chips still do
    not correlate (clouds, water, a different scene).
    """
    if not inliers.any() or n_chips == 0:
        return 0.0
    share = inliers.sum() / n_chips
    return float(np.clip(share * max(float(np.median(ncc_values[inliers])), 0.0), 0.0, 1.0))


def holdout_residual(p: np.ndarray, q: np.ndarray, kind: str, inlier_px: float, every: int = 4,
                     info: np.ndarray | None = None) -> float:
    """RMS error on held-back tie points (every ``every``-th) of a model fitted on the others.

    Held-back points that the full model calls outliers (changed ground) are left out.
    """
    n = len(p)
    held = np.zeros(n, bool)
    held[::every] = True
    if n < 2 * every or held.all():
        return float("nan")
    m, _, _ = fit_model(p[~held], q[~held], kind, inlier_px, None if info is None else info[~held])
    _, full_inl, _ = fit_model(p, q, kind, inlier_px, info)
    return _rms(p, q, m, held & full_inl)


def fit_field(p: np.ndarray, r: np.ndarray, shape: tuple[int, int], step: int, bandwidth_px: float,
              prior: float = 0.3) -> np.ndarray:
    """A smooth displacement field from residual tie-point vectors (Nadaraya-Watson, Gaussian kernel).

    Parameters
    ----------
    p : (n, 2) tie points (x, y) on the grid.
    r : (n, 2) residual displacement after the global model, px.
    shape : (rows, cols) of the grid.
    step : node spacing of the returned field, px.
    bandwidth_px : Gaussian kernel sigma.
    prior : weight of a zero displacement at every node, so the field fades to nothing far from tie points.

    Returns
    -------
    (2, gh, gw) float32 field of (dx, dy) at nodes ``(i * step, j * step)``.
    """
    gh, gw = shape[0] // step + 2, shape[1] // step + 2
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float64) * step
    d2 = (xs[..., None] - p[:, 0]) ** 2 + (ys[..., None] - p[:, 1]) ** 2
    w = np.exp(-0.5 * d2 / bandwidth_px**2)
    den = w.sum(axis=-1) + prior
    fx = (w * r[:, 0]).sum(axis=-1) / den
    fy = (w * r[:, 1]).sum(axis=-1) / den
    return np.stack([fx, fy]).astype(np.float32)


def reject_local_outliers(p: np.ndarray, r: np.ndarray, k: int = 6, limit_px: float = 0.5) -> np.ndarray:
    """Tie points whose residual differs from their ``k`` nearest neighbours' median by more than
    ``limit_px`` plus three robust sigmas are outliers (a changed object, a cloud edge)."""
    n = len(p)
    if n <= 3:
        return np.ones(n, bool)
    d = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, : min(k, n - 1)]
    dev = np.hypot(*(r - np.median(r[nn], axis=1)).T)
    sigma = 1.4826 * float(np.median(dev))
    return dev <= limit_px + 3 * sigma


# --------------------------------------------------------------------------- applying


def _field_at(field_: np.ndarray, step: int, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of a coarse (2, gh, gw) field at grid coordinates."""
    coords = np.stack([ys / step, xs / step])
    fx = ndimage.map_coordinates(field_[0], coords, order=1, mode="nearest")
    fy = ndimage.map_coordinates(field_[1], coords, order=1, mode="nearest")
    return fx, fy


def source_box(matrix: np.ndarray, box: Box, margin: int = 3, field_: np.ndarray | None = None) -> Box:
    """The box of ``after`` needed to resample ``box`` of the grid through ``matrix`` (and ``field_``)."""
    r, c, h, w = box
    xs = np.array([c, c + w, c, c + w], dtype=float)
    ys = np.array([r, r, r + h, r + h], dtype=float)
    xa = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    ya = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    if field_ is not None:
        margin += int(np.ceil(np.abs(field_).max()))
    c0, c1 = int(np.floor(xa.min())) - margin, int(np.ceil(xa.max())) + margin
    r0, r1 = int(np.floor(ya.min())) - margin, int(np.ceil(ya.max())) + margin
    return (r0, c0, r1 - r0, c1 - c0)


def resample(src: np.ndarray, src_valid: np.ndarray, src_box: Box, matrix: np.ndarray,
             box: Box, field_: np.ndarray | None = None, step: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``src`` (read at ``src_box`` of after) onto ``box`` of the grid.

    Parameters
    ----------
    src : (bands, h, w) float32.
    src_valid : (h, w) bool.
    matrix : (2, 3) grid pixel -> after pixel.
    field_, step : optional local displacement field and its node spacing (see :func:`fit_field`).

    Returns
    -------
    (bands, box_h, box_w) float32 and (box_h, box_w) bool validity.
    """
    r, c, h, w = box
    sr, sc = src_box[0], src_box[1]
    local = matrix.astype(np.float64).copy()
    local[:, 2] = matrix[:, :2] @ np.array([c, r], dtype=float) + matrix[:, 2] - np.array([sc, sr], dtype=float)
    if field_ is None and np.allclose(local, np.round(local)) and np.allclose(local[:, :2], np.eye(2)):
        ox, oy = int(round(local[0, 2])), int(round(local[1, 2]))
        return (np.ascontiguousarray(src[:, oy:oy + h, ox:ox + w]),
                np.ascontiguousarray(src_valid[oy:oy + h, ox:ox + w]))
    out = np.empty((src.shape[0], h, w), dtype=np.float32)
    if field_ is None:
        m = local.astype(np.float32)
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        for i in range(src.shape[0]):
            out[i] = cv2.warpAffine(src[i], m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        vmask = cv2.warpAffine(src_valid.astype(np.float32), m, (w, h),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
        return out, vmask > 0.999
    ys, xs = np.mgrid[r:r + h, c:c + w].astype(np.float64)
    fx, fy = _field_at(field_, step, xs, ys)
    mx = (matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] + fx - sc).astype(np.float32)
    my = (matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] + fy - sr).astype(np.float32)
    for i in range(src.shape[0]):
        out[i] = cv2.remap(src[i], mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    vmask = cv2.remap(src_valid.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=0)
    return out, vmask > 0.999


def chip_is_clear(saturated: np.ndarray, max_frac: float = 0.5) -> bool:
    """A chip mostly saturated (clouds, glare, snow) measures nothing reliable.

    Fewer saturated pixels are masked out of the measurement instead: bright 8-bit
    scenes clip a fifth of their pixels (roofs, concrete) and are still well textured.
    """
    return float(saturated.mean()) <= max_frac


def coarse_limit_px(shape: tuple[int, int], params: RegisterConfig) -> float:
    """Largest shift searched, in grid pixels."""
    return params.max_shift_frac * max(shape)


# --------------------------------------------------------------------------- weather


def match_percentiles(src: np.ndarray, ref: np.ndarray, use: np.ndarray, lo: float = 2.0,
                      hi: float = 98.0) -> np.ndarray:
    """``src`` mapped band by band so that its ``lo``..``hi`` percentiles over ``use`` meet ``ref``'s.

    Parameters
    ----------
    src, ref : (bands, h, w) arrays of one grid.
    use : (h, w) bool, the pixels whose percentiles are matched.

    Returns
    -------
    (bands, h, w) float32.
    """
    out = np.asarray(src, np.float32).copy()
    if not use.any():
        return out
    for b in range(out.shape[0]):
        s_lo, s_hi = np.percentile(out[b][use], [lo, hi])
        r_lo, r_hi = np.percentile(np.asarray(ref[b], np.float32)[use], [lo, hi])
        gain = (r_hi - r_lo) / max(float(s_hi - s_lo), 1e-6)
        out[b] = (out[b] - s_lo) * gain + r_lo
    return out


def hidden_by_weather(before: np.ndarray, after: np.ndarray, valid: np.ndarray, scale: obs.Scale,
                      params: ObserveConfig, open_px: int = 2) -> np.ndarray:
    """Where a cloud or its bright rim covers the ground on either date: chips there must not vote.

    Parameters
    ----------
    before, after : (bands, h, w) a cheap (decimated) read of both dates, ``after`` roughly on
        ``before``'s grid (a whole-pixel coarse shift is enough: the test looks at regions, not edges).
    valid : (h, w) bool, valid on both.
    scale : ``before``'s band scale (:class:`changedet.observability.Scale`).
    params : the observability thresholds (cloud core and rim brightness and brightening).
    open_px : radius of the opening that removes specks (a new white roof, glints).

    Returns
    -------
    (h, w) bool.

    Notes
    -----
    ``after`` is first matched to ``before`` by per-band percentiles (5th and 75th, so that clouds
    over a fifth of the scene do not stretch the match), fitted twice, the second time on the
    pixels the first pass left clear. Then the per-pixel cloud evidence of
    :func:`changedet.observability.evidence` (bright and white in every visible band, and brighter
    than the other date) marks cloud cores and rims on either date. No size or shape rule applies:
    a chip asks only how much of it a bright newcomer covers, and a large new roof must not vote
    either. Shadows and haze darken or veil the ground without moving it, which the chip
    measurement's gain and offset absorb.
    """
    use = valid
    hidden = np.zeros(valid.shape, bool)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * open_px + 1, 2 * open_px + 1))
    for _ in range(2):
        matched = match_percentiles(after, before, use, 5.0, 75.0)
        ev_b, ev_a = obs.evidence(before, matched, valid, scale, params, after_raw=after)
        bright = (((ev_b | ev_a) & (obs.CORE | obs.RIM)) > 0).astype(np.uint8)
        hidden = cv2.dilate(cv2.morphologyEx(bright, cv2.MORPH_OPEN, disk), disk) > 0
        use = valid & ~hidden
        if use.mean() < 0.1:
            break
    return hidden


def chip_hidden_share(hidden: np.ndarray, boxes: list[Box], factor: float) -> np.ndarray:
    """Share of each chip (a box on the full grid) that ``hidden`` (the grid decimated by ``factor``) covers.

    Returns
    -------
    (n,) float64 in 0..1, 0 for a chip that falls outside ``hidden``.
    """
    h, w = hidden.shape
    out = np.zeros(len(boxes))
    for i, (r0, c0, bh, bw) in enumerate(boxes):
        a0, b0 = int(np.floor(r0 / factor)), int(np.floor(c0 / factor))
        a1, b1 = int(np.ceil((r0 + bh) / factor)), int(np.ceil((c0 + bw) / factor))
        part = hidden[max(a0, 0):min(a1, h), max(b0, 0):min(b1, w)]
        out[i] = float(part.mean()) if part.size else 0.0
    return out


def clear_chips(share: np.ndarray, max_frac: float, min_chips: int = 6) -> np.ndarray:
    """Chips that vote: those with at most ``max_frac`` of their area hidden by weather.

    When fewer than ``min_chips`` are that clear, the ``min_chips`` least hidden vote (ties by
    position), so that an overcast scene is still measured, and its confidence says how well.
    """
    keep = share <= max_frac
    if keep.sum() < min(min_chips, len(share)):
        keep = np.zeros(len(share), bool)
        keep[np.argsort(share, kind="stable")[:min_chips]] = True
    return keep
