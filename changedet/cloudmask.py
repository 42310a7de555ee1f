"""Clouds and cloud shadows of a Sentinel-2 date from the ukis-csmask CNN (``observe.cloud_model: csmask``).

The optional alternative to the classical cloud and shadow evidence of
:mod:`changedet.observability`. ukis-csmask (Wieland et al. 2019, 2022; Apache-2.0) ships four
ONNX U-Nets inside its wheel: 4 bands (blue, green, red, NIR) or 6 bands (+ SWIR 1.6 and 2.2 µm),
for L1C or L2A. It takes one date, float32 reflectance (0..1) as (rows, cols, bands), and returns
per pixel 0 clear, 1 cloud, 2 cloud shadow. It is a single-date classifier: unlike the classical
detector it needs no other date and finds the shadow itself, but it knows only Sentinel-2-like
bands.

The functions here are pure, on arrays: which bands the model can use (:func:`band_names`,
:func:`model_bands`), DN to reflectance (:func:`reflectance`), averaging to the model's pixel size
(:func:`block_sums`) and the classification itself (:func:`cloud_shadow`). The pipeline reads the
windows and hands the masks to :func:`changedet.observability.resolve`, which buffers them like
the classical ones.

References
----------
Wieland, M., Li, Y. & Martinis, S. (2019). Multi-sensor cloud and cloud shadow segmentation with a
convolutional neural network. Remote Sensing of Environment 230, 111203.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

#: csmask's band names, in the order its models take them
CSMASK_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
#: band descriptions that name a csmask band (Sentinel-2 band ids or the names themselves)
_NAMES = {"b02": "blue", "b2": "blue", "blue": "blue", "b03": "green", "b3": "green", "green": "green",
          "b04": "red", "b4": "red", "red": "red", "b08": "nir", "b8": "nir", "nir": "nir",
          "b11": "swir16", "swir16": "swir16", "b12": "swir22", "swir22": "swir22"}
#: without descriptions, the band count decides, as for the rest of changedet
#: (:func:`changedet.arrays.band_roles`): 4 or 5 bands are B02 B03 B04 B08 (+ one SWIR band, which one
#: is not known), 13 bands are Sentinel-2 B01..B12 with B8A (where B8A, B11 and B12 sit is not known)
_BY_COUNT = {4: {0: "blue", 1: "green", 2: "red", 3: "nir"}, 5: {0: "blue", 1: "green", 2: "red", 3: "nir"},
             13: {1: "blue", 2: "green", 3: "red", 7: "nir"}}
#: class values of csmask's output
CLEAR, CLOUD, SHADOW = 0, 1, 2


def installed() -> bool:
    """Whether the optional extra (``ukis-csmask`` with onnxruntime) can be imported."""
    try:
        import ukis_csmask.mask  # noqa: F401
    except ImportError:
        return False
    return True


def require_installed() -> None:
    """Raise :class:`ConfigError` when the extra is missing."""
    if not installed():
        raise ConfigError("observe.cloud_model=csmask needs the optional extra: pip install 'changedet[csmask]' "
                          "(or set observe.cloud_model=classical)")


def band_names(descriptions: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """The csmask name of each band (None: not one the models use).

    Parameters
    ----------
    descriptions : one per band, as GDAL reports them (None or "" when unset).

    Notes
    -----
    Band descriptions decide when any is set (``B02``, ``B03``, ``B04``, ``B08``, ``B11``, ``B12``,
    or ``blue``, ``green``, ``red``, ``nir``, ``swir16``, ``swir22``, any case); otherwise the band
    count does, as for the rest of changedet: 4 or 5 bands are B02 B03 B04 B08 (+ SWIR), 13 bands
    Sentinel-2's B01..B12 with B8A. SWIR bands are only known by their description.
    """
    if any(d for d in descriptions):
        return tuple(_NAMES.get((d or "").strip().lower()) for d in descriptions)
    roles = _BY_COUNT.get(len(descriptions), {})
    return tuple(roles.get(i) for i in range(len(descriptions)))


def model_bands(names: tuple[str | None, ...]) -> tuple[int, ...]:
    """0-based indexes of the bands to give csmask, in :data:`CSMASK_BANDS` order: 6 when SWIR 1.6 and 2.2 µm
    are both there, else 4.

    Raises
    ------
    ValueError
        When blue, green, red or NIR is missing; the message names what is.
    """
    where = {n: i for i, n in reversed(list(enumerate(names))) if n is not None}
    missing = [b for b in CSMASK_BANDS[:4] if b not in where]
    if missing:
        raise ValueError(f"csmask needs Sentinel-2 B02 B03 B04 B08 (blue, green, red, NIR); {', '.join(missing)} "
                         "not found (set band descriptions, or give 4 bands in that order)")
    use = CSMASK_BANDS if all(b in where for b in CSMASK_BANDS) else CSMASK_BANDS[:4]
    return tuple(where[b] for b in use)


def reflectance(dn: np.ndarray, scale: float, offset: float = 0.0) -> np.ndarray:
    """``(dn + offset) / scale`` as float32 (Sentinel-2 L1C and L2A: scale 10000; offset -1000 from
    processing baseline 04.00 on)."""
    return ((np.asarray(dn, np.float32) + np.float32(offset)) / np.float32(scale)).astype(np.float32)


def block_sums(img: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of valid pixels and their count over ``factor`` × ``factor`` blocks.

    Parameters
    ----------
    img : (bands, h, w) float32; its origin on a multiple of ``factor`` of the scene grid.
    valid : (h, w) bool.

    Returns
    -------
    sums : (bands, ceil(h / factor), ceil(w / factor)) float64.
    counts : (ceil(h / factor), ceil(w / factor)) float64.

    Summed window by window, then divided once, this equals the block mean of the whole scene.
    """
    bands, h, w = img.shape
    gh, gw = -(-h // factor), -(-w // factor)
    x = np.zeros((bands, gh * factor, gw * factor), np.float64)
    v = np.zeros((gh * factor, gw * factor), np.float64)
    x[:, :h, :w] = np.where(valid, img, 0)
    v[:h, :w] = valid
    sums = x.reshape(bands, gh, factor, gw, factor).sum(axis=(2, 4))
    counts = v.reshape(gh, factor, gw, factor).sum(axis=(1, 3))
    return sums, counts


@dataclass(frozen=True)
class CloudShadow:
    """Cloud and cloud-shadow masks of one date, (h, w) bool each."""

    cloud: np.ndarray
    shadow: np.ndarray


def cloud_shadow(img: np.ndarray, valid: np.ndarray, product_level: str, threads: int = 0) -> CloudShadow:
    """Clouds and cloud shadows of one date by ukis-csmask.

    Parameters
    ----------
    img : (4 or 6, h, w) float32 reflectance in :data:`CSMASK_BANDS` order (:func:`model_bands`).
    valid : (h, w) bool; invalid pixels are neither cloud nor shadow.
    product_level : ``"l1c"`` or ``"l2a"``: which of the models to use.
    threads : onnxruntime threads (0: its choice).

    Notes
    -----
    Invalid pixels are given each band's median of the valid ones first, so the edge of a scene
    cut from a larger product is not read as dark ground (shadow). csmask tiles the image in
    256 px tiles with 20 % overlap and blends them; a smaller image is padded by mirroring.
    """
    if img.ndim != 3 or img.shape[0] not in (4, 6) or img.shape[1:] != valid.shape:
        raise ValueError(f"img must be (4 or 6, h, w) matching valid {valid.shape}, got {img.shape}")
    from ukis_csmask.mask import CSmask

    x = np.array(img, np.float32)
    if valid.any() and not valid.all():
        med = np.median(x[:, valid], axis=1).astype(np.float32)
        x[:, ~valid] = med[:, None]
    elif not valid.any():
        empty = np.zeros(valid.shape, bool)
        return CloudShadow(empty, empty)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input image is smaller than the internal tiling size")
        csm = CSmask(np.moveaxis(x, 0, -1), band_order=list(CSMASK_BANDS[:img.shape[0]]),
                     product_level=product_level, intra_op_num_threads=threads).csm[..., 0]
    return CloudShadow((csm == CLOUD) & valid, (csm == SHADOW) & valid)
