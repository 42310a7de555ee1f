"""Where change can be seen: clouds, cloud shadows, thick haze, saturation and nodata on either date.

A pixel hidden on either date is *not observable*: nothing is detected there and no object is
typed from it; the contract writes it as 255 in ``change_mask.tif`` and ``change_class.tif``.

The detector is classical and works on any imagery (RGB 8-bit, 4-band 16-bit, Sentinel-2). It
is bi-temporal: a cloud is what is bright and white on one date *and* much brighter than the
other date there, so a white roof present on both dates is never a cloud. Two steps:

1. :func:`evidence`, a pure per-pixel function run on the same windows as the change score
   (``after`` already on ``before``'s radiometry), sets bits per date: cloud core, cloud rim,
   darkening (shadow candidate), haze and saturation.
2. :func:`resolve`, on the whole scene, turns them into regions: cloud cores grown into their soft
   rims and kept when large (``cloud_min_area_m2``) and thick (``cloud_min_radius_m``); each date's
   cloud shadow found by the one displacement that best lays its clouds onto its dark regions
   (sun and cloud height are the same for a scene, Fmask's idea), the shadow being the clouds'
   footprint moved by it; thick haze; blown-out areas.

Both dates are handled alike. Band values are compared in units of ``before``'s 2nd..98th
percentile range per band (:class:`Scale`), which a cloud or a shadow does not depend on.

References
----------
Zhu, Z. & Woodcock, C. E. (2012). Object-based cloud and cloud shadow detection in Landsat
imagery (Fmask). Remote Sensing of Environment 118, 83-94.
Zhang, Y., Guindon, B. & Cihlar, J. (2002). An image transform to characterize and compensate for
spatial variations in thin cloud contamination of Landsat images (HOT). RSE 82, 173-187.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import scratch, windowed
from .config import ObserveConfig

#: reason codes of the whole-scene raster :func:`resolve` returns (0 = observable)
OBSERVABLE, NODATA, SATURATED, CLOUD, CLOUD_SHADOW, HAZE = 0, 1, 2, 3, 4, 5
REASONS = {NODATA: "nodata", SATURATED: "saturated", CLOUD: "cloud", CLOUD_SHADOW: "cloud_shadow", HAZE: "haze"}

#: evidence bits of one date
CORE, RIM, DARK, HAZY, SAT = 1, 2, 4, 8, 16
#: on coarse grids a cloud's core must still hold a disk this wide (px): a blob a few pixels across
#: (a turbid stretch of river, a rail yard at 10 m) cannot be told from a cloud by its shape
MIN_CLOUD_RADIUS_PX = 5
#: Gaussian sigma (px) of the local contrast the haze test compares
CONTRAST_SIGMA_PX = 3.0


@dataclass(frozen=True)
class Scale:
    """Per-band scale of the scene: values map to ``(x - lo) / (hi - lo)``, ``before``'s 2nd..98th percentiles.

    ``visible`` are the bands a cloud whitens (all but NIR and SWIR); ``blue`` and ``red`` serve
    the haze test (None: no colour). ``saturation`` is the level a band clips at on each date,
    ``(before, after)`` (None: not known, e.g. float data): each image clips at its own level.
    """

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    visible: tuple[int, ...]
    blue: int | None
    red: int | None
    nir: int | None
    saturation: tuple[float | None, float | None]

    @staticmethod
    def fit(before: np.ndarray, rgb: tuple[int, int, int] | None, nir: int | None,
            saturation: float | None | tuple[float | None, float | None]) -> Scale:
        """From (bands, n) valid samples of ``before``; ``rgb`` 0-based red, green, blue (None: no colour).

        ``saturation``: the clipping level of each date, or one level for both.
        """
        levels = saturation if isinstance(saturation, tuple) else (saturation, saturation)
        lo, hi = [], []
        for band in np.asarray(before, np.float64):
            p2, p98 = np.percentile(band, [2, 98]) if band.size else (0.0, 1.0)
            lo.append(float(p2))
            hi.append(float(max(p98, p2 + 1e-6)))
        n = before.shape[0]
        if rgb is not None and len(set(rgb)) == 3 and n >= 3:
            visible = tuple(sorted(set(rgb)))
            red, blue = rgb[0], rgb[2]
        else:
            visible = tuple(i for i in range(n) if i != nir) or (0,)
            red = blue = None
        return Scale(tuple(lo), tuple(hi), visible, blue, red, nir, levels)

    def apply(self, img: np.ndarray) -> np.ndarray:
        lo = np.asarray(self.lo, np.float32)[:, None, None]
        hi = np.asarray(self.hi, np.float32)[:, None, None]
        return (np.asarray(img, np.float32) - lo) / (hi - lo)


#: Gaussian sigma (px) that separates detail from the smooth trend in the contrast measure
DETAIL_SIGMA_PX = 1.5


def halo_px() -> int:
    """Context a window needs on each side for :func:`evidence` to equal the whole-image result."""
    return int(np.ceil(4 * DETAIL_SIGMA_PX)) + int(np.ceil(4 * CONTRAST_SIGMA_PX)) + 2


def _detail(x: np.ndarray) -> np.ndarray:
    """Local contrast of fine detail: the mean absolute difference from a slightly blurred copy.

    A smooth ramp (the edge of a haze patch, a brightness gradient) has none, so it does not
    count as ground texture showing through.
    """
    hp = np.abs(x - cv2.GaussianBlur(x, (0, 0), DETAIL_SIGMA_PX, borderType=cv2.BORDER_REFLECT))
    return cv2.GaussianBlur(hp, (0, 0), CONTRAST_SIGMA_PX, borderType=cv2.BORDER_REFLECT)


def _one_date(x: np.ndarray, y: np.ndarray, raw: np.ndarray, level: float | None, scale: Scale,
              params: ObserveConfig) -> np.ndarray:
    """Evidence bits of date ``x`` against the other date ``y`` (both scaled), uint8; ``raw`` is
    ``x`` as read, ``level`` the value its bands clip at (None: not known)."""
    vis = list(scale.visible)
    xv, yv = x[vis], y[vis]
    bright = xv.min(axis=0)  # the darkest visible band still bright: bright and white
    rise = (xv - yv).min(axis=0)  # brighter than the other date in every visible band
    bits = np.zeros(x.shape[1:], np.uint8)
    core = (bright >= params.cloud_min_brightness) & (rise >= params.cloud_min_brightening)
    if scale.nir is not None:  # clouds are bright in the near infrared too; water and shadow are not
        core &= x[scale.nir] >= 0.5 * params.cloud_min_brightness
    bits[core] |= CORE
    bits[(bright >= params.rim_min_brightness) & (rise >= params.rim_min_brightening)] |= RIM
    lx, ly = x.mean(axis=0), y.mean(axis=0)
    contrast_x, contrast_y = _detail(lx), _detail(ly)
    fall = lx - ly
    dark = ((fall <= -params.shadow_min_darkening) & (lx <= params.shadow_max_ratio * np.maximum(ly, 1e-3))
            & (lx <= params.shadow_max_level))
    bits[dark] |= DARK
    hazy = ((lx - ly) >= params.haze_min_brightening) & (contrast_x <= params.haze_max_contrast_ratio * contrast_y)
    if scale.blue is not None and scale.red is not None:  # haze scatters blue more than red (HOT)
        hazy &= (x[scale.blue] - y[scale.blue]) >= (x[scale.red] - y[scale.red])
    bits[hazy] |= HAZY
    if level is not None:
        bits[(raw[vis] >= level).all(axis=0)] |= SAT
    return bits


def evidence(before: np.ndarray, after: np.ndarray, valid: np.ndarray, scale: Scale,
             params: ObserveConfig, after_raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel evidence bits of each date (uint8 (h, w) each; 0 where invalid).

    Parameters
    ----------
    before, after : (bands, h, w) arrays, ``after`` already on ``before``'s radiometry.
    valid : (h, w) bool.
    scale : the scene's :class:`Scale`.
    after_raw : ``after`` as read, before its radiometric match (None: ``after`` is as read); its
        saturation is judged on these values against its own clipping level.

    Notes
    -----
    Bits per date: ``CORE`` bright and white in every visible band and brighter than the other
    date by ``cloud_min_brightening``; ``RIM`` the same with the rim's looser limits; ``DARK`` darker
    than the other date (by ``shadow_min_darkening`` and ``shadow_max_ratio``) and among the scene's darkest (``shadow_max_level``); ``HAZY`` brighter with its local contrast gone (and bluer
    than redder where colour is known); ``SAT`` every visible band at the clipping level.
    """
    x, y = scale.apply(before), scale.apply(after)
    eb = _one_date(x, y, before, scale.saturation[0], scale, params)
    ea = _one_date(y, x, after if after_raw is None else after_raw, scale.saturation[1], scale, params)
    eb[~valid] = 0
    ea[~valid] = 0
    return eb, ea


# --------------------------------------------------------------------------- whole scene


@dataclass(frozen=True)
class Observability:
    """What :func:`resolve` found: the reason raster and how it got there."""

    reason: np.ndarray  # (h, w) uint8 reason codes (may be a memory map)
    shadow_offset_px: tuple[tuple[float, float] | None, tuple[float, float] | None]  # (dx, dy) per date

    def observable(self) -> np.ndarray:
        return self.reason == OBSERVABLE

    def _counts(self) -> np.ndarray:
        counts = np.zeros(max(len(REASONS) + 1, 256), np.int64)
        for r0, r1 in windowed.strips(self.reason.shape, 1024):
            counts += np.bincount(np.asarray(self.reason[r0:r1]).ravel(), minlength=counts.size)
            scratch.release(self.reason)
        return counts

    def areas_m2(self, gsd_m: float) -> dict[str, float]:
        counts = self._counts()
        return {name: round(float(counts[code]) * gsd_m * gsd_m, 1) for code, name in REASONS.items()}

    def observable_km2(self, gsd_m: float) -> float:
        return float(self._counts()[OBSERVABLE]) * gsd_m * gsd_m / 1e6

    def observable_fraction(self) -> float:
        return round(float(self._counts()[OBSERVABLE]) / max(self.reason.size, 1), 6)


def _px(m: float, gsd_m: float) -> int:
    return int(np.ceil(m / gsd_m))


def _area_px(m2: float, gsd_m: float) -> int:
    return max(1, int(np.ceil(m2 / (gsd_m * gsd_m))))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask
    # a large disk is slow; repeated small ones approximate it (octagon) at a fraction of the cost
    out = mask.astype(np.uint8)
    step = min(radius, 8)
    done = 0
    while done < radius:
        r = min(step, radius - done)
        out = cv2.dilate(out, _disk(r))
        done += r
    return out.astype(bool)


def clouds(core: np.ndarray, rim: np.ndarray, gsd_m: float, params: ObserveConfig) -> np.ndarray:
    """Cloud regions of one date: each rim region holding a core, kept when large and thick.

    A cloud is a blob: its core holds a disk of ``cloud_min_radius_m``, which a new road, a roof
    row does not; and it is ragged: a region that fills ``cloud_max_rectangularity`` of its
    minimum-area rectangle is a roof, a hangar or a paved yard.
    """
    grown = (rim | core).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(core.shape, bool)
    core_px = np.bincount(labels[core], minlength=n)
    keep = (stats[:, cv2.CC_STAT_AREA] >= _area_px(params.cloud_min_area_m2, gsd_m)) & (core_px > 0)
    keep[0] = False
    # a cloud is a blob: its core holds a disk of cloud_min_radius_m (a new road or a roof row does not)
    radius = cv2.distanceTransform(core.astype(np.uint8), cv2.DIST_L2, 5)
    deepest = np.zeros(n, np.float32)
    np.maximum.at(deepest, labels[core], radius[core])
    keep &= deepest >= max(params.cloud_min_radius_m / gsd_m, MIN_CLOUD_RADIUS_PX)
    # a roof, a hangar or a paved yard is rectilinear: it fills its minimum-area rectangle
    for i in np.flatnonzero(keep):
        x, y, w, h = stats[i, :4]
        sub = (labels[y:y + h, x:x + w] == i).astype(np.uint8)
        contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        (_, _), (rw, rh), _ = cv2.minAreaRect(np.concatenate(contours))
        keep[i] = stats[i, cv2.CC_STAT_AREA] < params.cloud_max_rectangularity * max(rw * rh, 1.0)
    return keep[labels]


def _decimate(mask: np.ndarray, factor: int) -> np.ndarray:
    h, w = mask.shape
    gh, gw = -(-h // factor), -(-w // factor)
    pad = np.zeros((gh * factor, gw * factor), np.float32)
    pad[:h, :w] = mask
    return pad.reshape(gh, factor, gw, factor).mean(axis=(1, 3))


def shadow_offset(cloud: np.ndarray, dark: np.ndarray, max_offset_px: int, min_lift: float) -> tuple[int, int] | None:
    """The displacement (dx, dy) in pixels that best lays ``cloud`` onto ``dark``, or None.

    Cross-correlation (FFT) of the two masks on a grid of at most 512 px, over displacements up to
    ``max_offset_px``. For each displacement, the clouds whose shadow could be seen there (inside
    the scene, not under a cloud) are counted, and the share of them that lands on dark pixels is
    compared with the share of dark pixels in the scene. Among displacements whose lift reaches
    ``min_lift`` (dark pixels met by chance give a lift near 1; thin clouds cast no dark shadow, so
    a share near 1 cannot be asked for), the one laying the most cloud pixels on dark ones beyond
    chance wins.
    """
    if not cloud.any() or not dark.any():
        return None
    factor = max(1, int(np.ceil(max(cloud.shape) / 512)))
    return _offset_on_grid(_decimate(cloud, factor), _decimate(dark, factor), factor, max_offset_px, min_lift)


def _offset_on_grid(c: np.ndarray, d: np.ndarray, factor: int, max_offset_px: int,
                    min_lift: float) -> tuple[int, int] | None:
    """:func:`shadow_offset` on the masks decimated by ``factor`` (cloud and dark shares per cell)."""
    seen = 1.0 - c
    h, w = c.shape
    fh, fw = cv2.getOptimalDFTSize(2 * h), cv2.getOptimalDFTSize(2 * w)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # sum_x a(x) b(x + s) for every s, linear (zero-padded)
        fa = np.fft.rfft2(a, (fh, fw))
        fb = np.fft.rfft2(b, (fh, fw))
        return np.fft.irfft2(np.conj(fa) * fb, (fh, fw))

    hit = corr(c, d)
    kept = corr(c, seen)
    reach = max(1, max_offset_px // factor)
    ys = np.fft.fftfreq(fh, 1.0 / fh).astype(int)
    xs = np.fft.fftfreq(fw, 1.0 / fw).astype(int)
    sel = (np.abs(ys)[:, None] <= reach) & (np.abs(xs)[None, :] <= reach)
    sel &= kept >= 0.1 * float(c.sum())  # at least a tenth of the clouds' shadow can be seen
    density = float(d.sum()) / max(float(seen.sum()), 1e-6)
    lift = np.where(sel, hit / np.maximum(kept, 1e-6), 0.0) / max(density, 1e-9)
    # among displacements well above chance, the one that lays the most cloud pixels on dark ones
    # beyond chance: a small cloud whose footprint happens to fit a large cloud's shadow must not
    # win on share, nor a large footprint on dark pixels it meets anyway
    score = np.where(lift >= min_lift, hit - density * kept, -1.0)  # dark pixels met beyond chance
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    if score[iy, ix] < 0:
        return None
    return int(xs[ix]) * factor, int(ys[iy]) * factor


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _large(mask: np.ndarray, min_px: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def _haze(hazy: np.ndarray, gsd_m: float, params: ObserveConfig) -> np.ndarray:
    """Thick haze regions: hazy pixels closed over small gaps, holes filled, kept when large.

    Where the ground under the haze is featureless its contrast cannot drop, so the pixel test
    leaves holes there; they are as hidden as their surroundings.
    """
    if not hazy.any():
        return hazy
    closed = cv2.morphologyEx(hazy.astype(np.uint8), cv2.MORPH_CLOSE, _disk(3)).astype(bool)
    big = _large(closed, _area_px(params.haze_min_area_m2, gsd_m))
    if not big.any():
        return big
    # holes: gaps enclosed by haze (not reaching the scene's border) smaller than a haze patch
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~big).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    hole = stats[:, cv2.CC_STAT_AREA] < _area_px(params.haze_min_area_m2, gsd_m)
    hole[edge] = False
    hole[0] = False
    return big | hole[labels]


def _classical_cloud_shadow(ev: np.ndarray, gsd_m: float, params: ObserveConfig
                            ) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """Clouds, their shadow and the cloud-to-shadow displacement (or None) of one date's evidence bits."""
    cl = clouds((ev & CORE) > 0, (ev & RIM) > 0, gsd_m, params)
    if not cl.any():
        return cl, cl, None
    dark = _large((ev & DARK) > 0, _area_px(params.shadow_min_area_m2, gsd_m))
    found = shadow_offset(cl, dark, _px(params.shadow_max_offset_m, gsd_m), params.shadow_min_lift)
    if found is None:
        return cl, np.zeros_like(cl), None
    # the shadow is the cloud's footprint moved by the sun's offset (as in Fmask): dark ground
    # darkened is still dark, so a per-pixel test would leave holes in it
    return cl, _shift(cl, found[0], found[1]), (float(found[0]), float(found[1]))


def resolve(ev_before: np.ndarray, ev_after: np.ndarray, valid: np.ndarray, gsd_m: float,
            params: ObserveConfig,
            cloud_shadow: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
            *, window_px: int = 1024, scr: scratch.Scratch = scratch.IN_MEMORY,
            more_clouds: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> Observability:
    """The scene's reason raster from both dates' evidence bits (:func:`evidence`).

    Parameters
    ----------
    cloud_shadow : optional ((cloud, shadow) of before, (cloud, shadow) of after), (h, w) bool each,
        found by another detector (:mod:`changedet.cloudmask`). They replace the clouds and shadows
        found from the evidence bits; haze and saturation still come from the bits.
    more_clouds : optional clouds of each date ((h, w) bool or None) found by a rule the evidence
        bits alone cannot apply (a series' passing clouds,
        :func:`changedet.series.background.passing_clouds`): added to the clouds found from the
        bits before their shadows are looked for.
    window_px, scr : the scene is gone through by windows of ``window_px`` (regions labelled with
        their seams joined, buffers and distances with a halo), its masks held in arrays from
        ``scr``; the result is the same as on whole arrays. The evidence and ``valid`` may be memory
        maps or lazy views (:class:`changedet.windowed.Where`). Haze, when there is any, is still
        resolved on the whole scene.

    Returns
    -------
    Observability with ``reason`` uint8 (h, w): 0 observable, else the first of nodata, cloud,
    cloud shadow, haze, saturated that holds on either date (clouds and shadows are buffered by
    ``buffer_m``), and the shadow displacement found per date (None with ``cloud_shadow``).
    """
    shape = ev_before.shape
    buffer_px = min(_px(params.buffer_m, gsd_m), 64)
    found: dict[int, list[np.ndarray]] = {SATURATED: [], HAZE: [], CLOUD_SHADOW: [], CLOUD: []}
    offsets: list[tuple[float, float] | None] = []
    for i, ev in enumerate((ev_before, ev_after)):
        if cloud_shadow is not None:
            (cl, sh), off = cloud_shadow[i], None
        else:
            cl, sh, off = _cloud_shadow_windowed(ev, gsd_m, params, window_px, scr, more_clouds[i])
        offsets.append(off)
        for code, m in ((CLOUD, cl), (CLOUD_SHADOW, sh)):
            if m is not None and _any(m, window_px):
                found[code].append(_dilate_windowed(m, buffer_px, window_px, scr))
        hz = _haze_windowed(ev, gsd_m, params, window_px, scr)
        if hz is not None:
            found[HAZE].append(hz)
        sat = _large_windowed(_bits(ev, SAT), _area_px(params.saturation_min_area_m2, gsd_m), window_px, scr)
        if sat is not None:
            found[SATURATED].append(sat)
    reason = scr.zeros(shape, np.uint8)
    for r, c, h, w in windowed.windows(shape, window_px):
        part = np.zeros((h, w), np.uint8)
        for code in (SATURATED, HAZE, CLOUD_SHADOW, CLOUD):
            for m in found[code]:
                part[np.asarray(m[r:r + h, c:c + w]) > 0] = code
                scratch.release(m)
        part[~np.asarray(valid[r:r + h, c:c + w]).astype(bool)] = NODATA
        reason[r:r + h, c:c + w] = part
        scratch.release(reason)
    return Observability(reason, (offsets[0], offsets[1]))


def _bits(ev: np.ndarray, bit: int) -> windowed.Where:
    return windowed.Where(ev, lambda e: (e & bit) > 0)


def _any(m: np.ndarray, window_px: int) -> bool:
    for r0, r1 in windowed.strips(m.shape, window_px):
        hit = bool(np.any(np.asarray(m[r0:r1])))
        scratch.release(m)
        if hit:
            return True
    return False


def _large_windowed(src: windowed.Where, min_px: int, window_px: int,
                    scr: scratch.Scratch) -> np.ndarray | None:
    """:func:`_large` of a lazy mask, as a uint8 array from ``scr``; None when nothing is left."""
    labels, stats = windowed.label(src, window_px, scr)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    if not keep.any():
        return None
    return windowed.fill(scr.zeros(src.shape, np.uint8), windowed.apply(labels, keep.astype(np.uint8), window_px))


def _dilate_windowed(mask: np.ndarray, radius: int, window_px: int, scr: scratch.Scratch) -> np.ndarray:
    """:func:`_dilate` window by window (with a halo of ``radius``), as a uint8 array from ``scr``."""
    out = scr.zeros(mask.shape, np.uint8)
    for box in windowed.windows(mask.shape, window_px):
        part, big = windowed.read(mask, box, radius)
        grown = _dilate(part.astype(bool), radius) if radius > 0 and part.any() else part.astype(bool)
        r, c, h, w = box
        out[r:r + h, c:c + w] = windowed.crop(grown, big, box)
        scratch.release(out)
    return out


def _clouds_windowed(ev: np.ndarray, gsd_m: float, params: ObserveConfig, window_px: int,
                     scr: scratch.Scratch) -> np.ndarray | None:
    """:func:`clouds` of one date's evidence bits, window by window (uint8 from ``scr``; None: no cloud)."""
    labels, stats = windowed.label(_bits(ev, CORE | RIM), window_px, scr)
    n = len(stats)
    if n <= 1:
        return None
    core_px = np.zeros(n, np.int64)
    for r, c, h, w in windowed.windows(ev.shape, window_px):
        core = (np.asarray(ev[r:r + h, c:c + w]) & CORE) > 0
        core_px += np.bincount(np.asarray(labels[r:r + h, c:c + w])[core], minlength=n)
        scratch.release(labels, ev)
    keep = (stats[:, cv2.CC_STAT_AREA] >= _area_px(params.cloud_min_area_m2, gsd_m)) & (core_px > 0)
    keep[0] = False
    if not keep.any():
        return None
    # a cloud is a blob: its core holds a disk of cloud_min_radius_m; a distance of at least that
    # is decided within a halo of that many pixels (shorter paths lie inside it)
    min_radius = max(params.cloud_min_radius_m / gsd_m, MIN_CLOUD_RADIUS_PX)
    deep = np.zeros(n, bool)
    for box in windowed.windows(ev.shape, window_px):
        part, big = windowed.read(ev, box, int(np.ceil(min_radius)) + 3)
        core = ((part & CORE) > 0).astype(np.uint8)
        if not core.any():
            continue
        radius = windowed.crop(cv2.distanceTransform(core, cv2.DIST_L2, 5), big, box)
        r, c, h, w = box
        lab = np.asarray(labels[r:r + h, c:c + w])
        deep[np.unique(lab[(windowed.crop(core, big, box) > 0) & (radius >= min_radius)])] = True
        scratch.release(labels)
    keep &= deep
    # a roof, a hangar or a paved yard is rectilinear: it fills its minimum-area rectangle
    for i in np.flatnonzero(keep):
        x, y, w, h = stats[i, :4]
        sub = (np.asarray(labels[y:y + h, x:x + w]) == i).astype(np.uint8)
        scratch.release(labels)
        contours, _ = cv2.findContours(sub, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        (_, _), (rw, rh), _ = cv2.minAreaRect(np.concatenate(contours))
        keep[i] = stats[i, cv2.CC_STAT_AREA] < params.cloud_max_rectangularity * max(rw * rh, 1.0)
    if not keep.any():
        return None
    return windowed.fill(scr.zeros(ev.shape, np.uint8), windowed.apply(labels, keep.astype(np.uint8), window_px))


def _decimate_windowed(mask: np.ndarray, factor: int, window_px: int) -> np.ndarray:
    """:func:`_decimate` by strips of whole cells (the cells' shares of 0/1 pixels are exact sums)."""
    h, w = mask.shape
    gh, gw = -(-h // factor), -(-w // factor)
    out = np.zeros((gh, gw), np.float32)
    cells = max(1, window_px // factor)
    for g0 in range(0, gh, cells):
        g1 = min(gh, g0 + cells)
        pad = np.zeros(((g1 - g0) * factor, gw * factor), np.float32)
        part = np.asarray(mask[g0 * factor:g1 * factor])
        scratch.release(mask)
        pad[:part.shape[0], :w] = part > 0
        out[g0:g1] = pad.reshape(g1 - g0, factor, gw, factor).mean(axis=(1, 3))
    return out


def _shift_windowed(mask: np.ndarray, dx: int, dy: int, window_px: int, scr: scratch.Scratch) -> np.ndarray:
    """:func:`_shift` window by window, as a uint8 array from ``scr``."""
    h, w = mask.shape
    out = scr.zeros(mask.shape, np.uint8)
    for r, c, hh, ww in windowed.windows(mask.shape, window_px):
        r0, c0 = max(r - dy, 0), max(c - dx, 0)
        r1, c1 = min(r + hh - dy, h), min(c + ww - dx, w)
        if r1 > r0 and c1 > c0:
            out[r0 + dy:r1 + dy, c0 + dx:c1 + dx] = np.asarray(mask[r0:r1, c0:c1]) > 0
            scratch.release(out, mask)
    return out


def _cloud_shadow_windowed(ev: np.ndarray, gsd_m: float, params: ObserveConfig, window_px: int,
                           scr: scratch.Scratch, more: np.ndarray | None = None,
                           ) -> tuple[np.ndarray | None, np.ndarray | None, tuple[float, float] | None]:
    """:func:`_classical_cloud_shadow` window by window, with ``more`` clouds (bool, or None) added
    to those of the bits; None for a mask with nothing in it."""
    cl = _clouds_windowed(ev, gsd_m, params, window_px, scr)
    if more is not None and more.any():
        cl = more.astype(np.uint8) if cl is None else np.maximum(cl, more.astype(np.uint8))
    if cl is None:
        return None, None, None
    dark = _large_windowed(_bits(ev, DARK), _area_px(params.shadow_min_area_m2, gsd_m), window_px, scr)
    found = None
    if dark is not None:
        factor = max(1, int(np.ceil(max(cl.shape) / 512)))
        found = _offset_on_grid(_decimate_windowed(cl, factor, window_px), _decimate_windowed(dark, factor, window_px),
                                factor, _px(params.shadow_max_offset_m, gsd_m), params.shadow_min_lift)
    if found is None:
        return cl, None, None
    return cl, _shift_windowed(cl, found[0], found[1], window_px, scr), (float(found[0]), float(found[1]))


def _haze_windowed(ev: np.ndarray, gsd_m: float, params: ObserveConfig, window_px: int,
                   scr: scratch.Scratch = scratch.IN_MEMORY) -> np.ndarray | None:
    """:func:`_haze` of one date's bits, window by window (uint8 from ``scr``); None when no pixel
    is hazy (the usual case) or no haze region is large enough."""
    hazy = _bits(ev, HAZY)
    if not any(np.any(hazy[r0:r1]) for r0, r1 in windowed.strips(ev.shape, window_px)):
        return None
    closed = windowed.morphology(hazy, cv2.MORPH_CLOSE, _disk(3), 2, window_px, scr)
    min_px = _area_px(params.haze_min_area_m2, gsd_m)
    big = _large_windowed(windowed.Where(closed, lambda a: a > 0), min_px, window_px, scr)
    del closed
    if big is None:
        return None
    # holes: gaps enclosed by haze (not reaching the scene's border) smaller than a haze patch
    labels, stats = windowed.label(big, window_px, scr, value=0, connectivity=4)
    h, w = big.shape
    x, y, bw, bh = (stats[:, i] for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    hole = (stats[:, cv2.CC_STAT_AREA] < min_px) & ~((x == 0) | (y == 0) | (x + bw == w) | (y + bh == h))
    hole[0] = False
    for (r, c, hh, ww), part in windowed.apply(labels, hole, window_px):
        if part.any():
            big[r:r + hh, c:c + ww][part] = 1
        scratch.release(big)
    return big
