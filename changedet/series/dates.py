"""Which image is which date: discovery of the inputs of a series and of their acquisition dates.

Dates come from, in order: a manifest's ``date``, a metadata tag of the file (GDAL's
``TIFFTAG_DATETIME``, ``ACQUISITIONDATETIME``, a STAC-style ``datetime``), an ISO date in the file
name (``2024-10-17`` or ``20241017``). The result is sorted by date; a file without a date and two
files of one date are :class:`~changedet.errors.InputError`.
"""

from __future__ import annotations

import datetime as _dt
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning

from ..errors import ConfigError, InputError, shown
from ..yamlfile import read_yaml

#: file endings taken as rasters when a folder is given
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".jp2", ".png", ".img", ".vrt", ".jpg", ".jpeg"})
#: metadata tags that carry the acquisition time, most specific first
DATE_TAGS = ("datetime", "DATETIME", "ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "TIFFTAG_DATETIME")
_ISO = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
_COMPACT = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")
_TAG = re.compile(r"^\s*(\d{4})[-:](\d{2})[-:](\d{2})")


@dataclass(frozen=True)
class DatedImage:
    """One input of a series: its path and acquisition date, and where the date came from."""

    path: Path
    date: _dt.date
    source: str  # manifest, tag, filename

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "date": self.date.isoformat(), "date_source": self.source}


def _valid_date(y: str, m: str, d: str) -> _dt.date | None:
    try:
        return _dt.date(int(y), int(m), int(d))
    except ValueError:
        return None


def date_from_tag(value: str) -> _dt.date | None:
    """The date of a tag value (``2024:10:17 12:00:00``, ``2024-10-17T12:00:00Z``); None when none."""
    m = _TAG.match(str(value))
    return _valid_date(*m.groups()) if m else None


def date_from_name(name: str) -> _dt.date | None:
    """The date in a file name (``site_2024-10-17.tif``, ``S2_20241017_x.tif``); None when none or ambiguous."""
    found = {d for pat in (_ISO, _COMPACT) for m in pat.finditer(name) if (d := _valid_date(*m.groups()))}
    return found.pop() if len(found) == 1 else None


def date_from_tags(tags: dict[str, str]) -> _dt.date | None:
    """The date in a raster's metadata tags (:data:`DATE_TAGS`, in that order)."""
    for key in DATE_TAGS:
        if key in tags:
            d = date_from_tag(tags[key])
            if d is not None:
                return d
    return None


def _file_tags(path: Path) -> dict[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                tags = dict(ds.tags())
                for domain in ("IMAGERY",):
                    tags.update(ds.tags(ns=domain) or {})
                return tags
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{path}: not a raster GDAL can read; give GeoTIFFs or other GDAL rasters") from None


def date_of(path: Path) -> DatedImage:
    """Date one file from its tags, else its name; :class:`InputError` naming it when neither has one."""
    d = date_from_tags(_file_tags(path))
    if d is not None:
        return DatedImage(path, d, "tag")
    d = date_from_name(path.name)
    if d is not None:
        return DatedImage(path, d, "filename")
    raise InputError(f"{path}: no acquisition date found (no TIFFTAG_DATETIME, ACQUISITIONDATETIME or datetime tag, "
                     "no YYYY-MM-DD or YYYYMMDD in its name); list it in a manifest with its date")


def _manifest_date(value: Any, where: str) -> _dt.date:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    d = date_from_tag(str(value)) if isinstance(value, str) else None
    if d is None:
        raise ConfigError(f"{where}: date {shown(value)} is not a date; write it as YYYY-MM-DD")
    return d


def read_series_manifest(path: Path) -> tuple[list[DatedImage], dict[str, Any]]:
    """The images of a manifest (``images: [{path, date}]``, paths relative to it) and its ``config``."""
    data = read_yaml(path, "manifest")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        raise ConfigError(f"{path}: no images; list them under 'images:' as {{path, date}} entries")
    extra = [k for k in data if k not in ("images", "config")]
    if extra:
        raise ConfigError(f"{path}: unknown key {shown(extra[0])}; a series manifest has 'images' and 'config'")
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: config must be a mapping of overrides")
    out = []
    for i, entry in enumerate(data["images"]):
        where = f"{path}: image {i + 1}"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ConfigError(f"{where}: must be a mapping with path (and date)")
        unknown = [k for k in entry if k not in ("path", "date")]
        if unknown:
            raise ConfigError(f"{where}: unknown key {shown(unknown[0])}; use path and date")
        p = path.parent / entry["path"]
        if not p.is_file():
            raise InputError(f"{p}: no such file (listed in {path}); check the path")
        if entry.get("date") is not None:
            out.append(DatedImage(p, _manifest_date(entry["date"], where), "manifest"))
        else:
            out.append(date_of(p))
    return out, cfg


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def discover(inputs: list[Path] | tuple[Path, ...]) -> tuple[list[DatedImage], dict[str, Any]]:
    """The dated images of a series, sorted by date, and the manifest's config overrides.

    Parameters
    ----------
    inputs : raster files, folders (their rasters, by name) and YAML manifests, in any order.

    Raises
    ------
    InputError
        A file without a date, two files with the same date, a missing input, or fewer than two dates.
    """
    images: list[DatedImage] = []
    overrides: dict[str, Any] = {}
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
            if not files:
                raise InputError(f"{path}: no raster files (.tif, .jp2, ...) in this folder; give the images' folder")
            images.extend(date_of(p) for p in files)
        elif _is_manifest(path):
            found, cfg = read_series_manifest(path)
            images.extend(found)
            overrides.update(cfg)
        elif not path.exists():
            raise InputError(f"{path}: no such file or folder; check the path")
        else:
            images.append(date_of(path))
    seen: dict[tuple[_dt.date], DatedImage] = {}
    unique: list[DatedImage] = []
    for img in images:
        prior = seen.get((img.date,))
        if prior is not None:
            if prior.path.resolve() == img.path.resolve():
                continue  # the same file given twice (a folder and its manifest)
            raise InputError(f"{img.path}: has the same date ({img.date.isoformat()}) as {prior.path}; "
                             "give one image per date")
        seen[(img.date,)] = img
        unique.append(img)
    unique.sort(key=lambda im: im.date)
    if len(unique) < 2:
        what = unique[0].path if unique else (inputs[0] if inputs else "INPUTS")
        raise InputError(f"{what}: a series needs images of at least 2 dates; give more images")
    return unique, overrides


def pick_reference(images: list[DatedImage], reference: str | None) -> int:
    """Index of the reference image: the first date, or the one ``reference`` names (a path or a date)."""
    if reference is None or reference == "":
        return 0
    d = date_from_tag(reference) if _ISO.fullmatch(reference.strip()) else None
    for i, img in enumerate(images):
        if (d is not None and img.date == d) or (d is None and Path(reference).resolve() == img.path.resolve()):
            return i
    raise InputError(f"--reference {shown(reference)}: not one of the series' dates or files; "
                     "give one of its dates (YYYY-MM-DD) or paths")
