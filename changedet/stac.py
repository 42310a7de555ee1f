"""Inputs named by URL or by STAC Item, their acquisition dates, and the STAC records of runs.

An input is any path GDAL opens (a local file, a ``/vsi…`` path, an ``http(s)://``, ``s3://`` or
``gs://`` URL), kept as the string the user gave, or a STAC Item (a local ``.json`` file or a URL)
whose assets are opened: the ones ``--asset`` names, else its ``visual`` asset, else its 10 m bands
(blue, green, red, nir) stacked in a VRT.

Each run writes ``item.json``, a STAC Item of its outputs with the projection extension; a batch
writes ``collection.json``, a STAC Collection linking its sites' items.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .errors import InputError

#: string starts that name a file GDAL reaches through a virtual file system, not the local disk
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "ftp://", "/vsi")
#: the 10 m bands of a Sentinel-2 Item, by asset key, and by eo:bands common name; in stacking order
TEN_M_KEYS = (("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir"))
MEDIA_TYPES = {".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
               ".geojson": "application/geo+json", ".json": "application/json", ".png": "image/png",
               ".xml": "application/xml", ".html": "text/html", ".gpkg": "application/geopackage+sqlite3",
               ".fgb": "application/vnd.flatgeobuf"}
ROLES = {"change_mask.tif": ["data"], "change_class.tif": ["data"], "change_score.tif": ["data"],
         "detections.geojson": ["data"], "summary.json": ["metadata"], "quicklook.png": ["overview", "visual"],
         "tiepoints.geojson": ["metadata"], "report.html": ["overview"],
         "change_mask.tif.aux.xml": ["metadata"], "change_class.tif.aux.xml": ["metadata"]}
PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


@dataclass(frozen=True)
class Input:
    """One input as the user named it and as GDAL opens it.

    ``name`` is the string given (path, URL or STAC Item), used in messages and the record;
    ``open_path`` what rasterio opens (the same string, an asset's URL, or a VRT document);
    ``datetime`` the STAC Item's acquisition time; ``assets`` the Item's assets read.
    """

    name: str
    open_path: str
    datetime: str | None = None
    assets: tuple[str, ...] = ()

    @property
    def is_item(self) -> bool:
        return bool(self.assets)


def is_remote(path: str | Path) -> bool:
    """True when ``path`` is reached through a GDAL virtual file system (a URL or ``/vsi…``)."""
    return isinstance(path, str) and path.lower().startswith(REMOTE_PREFIXES)


def gdal_name(href: str) -> str:
    """The name GDAL itself (not rasterio) opens for ``href``: URLs become ``/vsicurl/…``, ``/vsis3/…``."""
    low = href.lower()
    if low.startswith(("http://", "https://", "ftp://")):
        return "/vsicurl/" + href
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if low.startswith(scheme):
            return prefix + href[len(scheme):]
    return href


def _http_url(path: str) -> str | None:
    url = path[len("/vsicurl/"):] if path.startswith("/vsicurl/") else path
    return url if url.lower().startswith(("http://", "https://")) else None


def input_sha256(path: str, chunk: int = 1 << 20, stop: threading.Event | None = None) -> str | None:
    """Hex SHA-256 of an input's bytes: a local file, or an http(s) URL streamed; None for others.

    ``stop``, once set, ends the reading at the next chunk and gives None (a run that failed no
    longer needs the hash, and a large input or a slow URL would otherwise be read to its end).
    """
    url = _http_url(path)
    if url is None and is_remote(path) or path.lstrip().startswith("<"):
        return None
    digest = hashlib.sha256()
    try:
        with (urllib.request.urlopen(url, timeout=60) if url else open(path, "rb")) as fh:  # noqa: S310
            while block := fh.read(chunk):
                if stop is not None and stop.is_set():
                    return None
                digest.update(block)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read ({_reason(exc)}); check the path or URL") from None
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:200]


def looks_like_item(path: str) -> bool:
    """True when ``path`` names a JSON document (a STAC Item is one) rather than a raster."""
    return path.split("?", 1)[0].lower().endswith(".json")


def _read_item(name: str) -> Any:
    import pystac

    if not is_remote(name) and not Path(name).is_file():
        raise InputError(f"{name}: no such file; check the path")
    try:
        obj = pystac.read_file(name)
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"{name}: cannot be read ({_reason(exc)}); check the URL, the network or the path") from None
    except Exception as exc:  # noqa: BLE001 - pystac raises many kinds for a document that is not STAC
        raise InputError(f"{name}: not a STAC Item ({_reason(exc)}); give a raster or a STAC Item JSON") from None
    if not isinstance(obj, pystac.Item):
        raise InputError(f"{name}: is a STAC {type(obj).__name__}, not an Item; give one Item per date")
    return obj


def _common_name(asset: Any) -> str | None:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    if len(bands) == 1 and isinstance(bands[0], dict):
        return bands[0].get("common_name") or bands[0].get("eo:common_name")
    return None


def default_assets(item: Any) -> tuple[str, ...]:
    """The assets read when none is named: ``visual``, else the 10 m bands (by key, else common name)."""
    if "visual" in item.assets:
        return ("visual",)
    by_common = {_common_name(a): k for k, a in item.assets.items()}
    picked = []
    for key, common in TEN_M_KEYS:
        found = key if key in item.assets else common if common in item.assets else by_common.get(common)
        if found is None:
            break
        picked.append(found)
    else:
        return tuple(picked)
    raise InputError(f"{item.get_self_href() or item.id}: no 'visual' asset and no 10 m bands (B02, B03, B04, "
                     f"B08); pick assets with --asset NAME (it has: {', '.join(item.assets)})")


def split_assets(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--asset`` values, repeated or comma lists, in order, without blanks."""
    return tuple(a.strip() for v in values or () for a in v.split(",") if a.strip())


def _stack_vrt(hrefs: Sequence[str], names: Sequence[str], labels: Sequence[str], where: str) -> str:
    """A VRT document stacking band 1 of each file, in order, with ``labels`` as band descriptions.

    Built as XML text, which GDAL opens as a dataset name; no file is written.
    """
    import rasterio

    bands, grid = [], None
    for href, name in zip(hrefs, names):
        try:
            with rasterio.open(href) as ds:
                this = (ds.width, ds.height, ds.transform, ds.crs)
                dtype, nodata = ds.dtypes[0], ds.nodata
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{href}: asset {name!r} of {where} cannot be read ({_reason(exc)}); "
                             "check the URL and the network") from None
        if grid is None:
            grid = this
        elif this[:3] != grid[:3] or this[3] != grid[3]:
            raise InputError(f"{where}: assets {names[0]!r} and {name!r} are on different grids; "
                             "pick assets of one resolution with --asset")
        bands.append((gdal_name(href), labels[len(bands)], dtype, nodata))
    assert grid is not None
    width, height, tr, crs = grid
    gdal_types = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
                  "float32": "Float32", "float64": "Float64"}
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        parts.append(f"<SRS>{escape(crs.to_wkt())}</SRS>")
        parts.append(f"<GeoTransform>{', '.join(repr(v) for v in tr.to_gdal())}</GeoTransform>")
    for i, (src, name, dtype, nodata) in enumerate(bands, 1):
        parts.append(f'<VRTRasterBand dataType="{gdal_types.get(dtype, "Float32")}" band="{i}">')
        parts.append(f"<Description>{escape(name)}</Description>")
        if nodata is not None:
            parts.append(f"<NoDataValue>{nodata!r}</NoDataValue>")
        parts.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(src)}</SourceFilename>'
                     f"<SourceBand>1</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{width}\" ySize=\"{height}\"/>"
                     f"<DstRect xOff=\"0\" yOff=\"0\" xSize=\"{width}\" ySize=\"{height}\"/></SimpleSource>")
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "".join(parts)


def resolve_input(path: str | Path, assets: Sequence[str] = ()) -> Input:
    """What to open for one input: the path itself, or the chosen assets of a STAC Item.

    Parameters
    ----------
    path : a raster path or URL, or a STAC Item (``.json`` file or URL); never rewritten.
    assets : asset keys to read from a STAC Item (default: :func:`default_assets`); ignored for rasters.
    """
    name = str(path)
    if not looks_like_item(name):
        return Input(name, name)
    item = _read_item(name)
    keys = tuple(assets) or default_assets(item)
    missing = [k for k in keys if k not in item.assets]
    if missing:
        raise InputError(f"{name}: has no asset {missing[0]!r}; pick one of {', '.join(item.assets)} with --asset")
    hrefs = [item.assets[k].get_absolute_href() or item.assets[k].href for k in keys]
    when = item.datetime or item.common_metadata.start_datetime
    iso = when.isoformat().replace("+00:00", "Z") if when is not None else None
    # band descriptions by common name where the Item gives one: the pipeline finds red, green, blue by them
    labels = [_common_name(item.assets[k]) or k for k in keys]
    open_path = hrefs[0] if len(hrefs) == 1 else _stack_vrt(hrefs, keys, labels, name)
    return Input(name, open_path, iso, keys)


# --------------------------------------------------------------------------- dates


def acquisition_datetime(ds: Any, inp: Input) -> str | None:
    """The acquisition time of an input: the STAC ``datetime``, else a GDAL date tag, else an ISO date
    in the file name (:mod:`changedet.series.dates`); ISO 8601 text, None when unknown."""
    from .series import dates

    if inp.datetime:
        return inp.datetime
    tags = dict(ds.tags())
    tags.update(ds.tags(ns="IMAGERY") or {})
    d = dates.date_from_tags(tags)
    if d is None and not inp.open_path.lstrip().startswith("<"):
        d = dates.date_from_name(inp.open_path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    return d.isoformat() if d is not None else None


def _parse_when(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


# --------------------------------------------------------------------------- the records


def _footprint(grid: dict[str, Any]) -> tuple[dict[str, Any] | None, list[float] | None, list[float] | None]:
    """The grid's outline and bbox in EPSG:4326, and its bbox in its own CRS; Nones without a CRS."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds, transform_geom

    if not grid.get("crs") or not grid.get("georeferenced", True):
        return None, None, None
    tr = Affine(*grid["transform"][:6])
    w, h = grid["width"], grid["height"]
    xs = [tr.c, tr.c + tr.a * w]
    ys = [tr.f, tr.f + tr.e * h]
    native = [min(xs), min(ys), max(xs), max(ys)]
    crs = CRS.from_user_input(grid["crs"])
    ring = [[native[0], native[1]], [native[2], native[1]], [native[2], native[3]], [native[0], native[3]],
            [native[0], native[1]]]
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=9)
    bbox = [round(v, 9) for v in transform_bounds(crs, "EPSG:4326", *native, densify_pts=21)]
    geom = {"type": "Polygon", "coordinates": [[list(p) for p in geom["coordinates"][0]]]}
    return geom, bbox, native


def run_item(summary: dict[str, Any], files: Sequence[str]) -> dict[str, Any]:
    """The STAC Item of one run's outputs (``item.json``), as a JSON-ready dict.

    Parameters
    ----------
    summary : the run record (``summary.json``), for the site, grid and input dates.
    files : the output files, as names in the output folder; each becomes an asset.

    Notes
    -----
    ``datetime`` is the after image's acquisition time, ``start_datetime``/``end_datetime`` before's
    and after's when both are known; with neither date known, ``datetime`` is the run's ``created``.
    The projection extension (v2.0.0) carries ``proj:code``, ``proj:shape``, ``proj:transform`` and
    ``proj:bbox`` of the output grid. Asset hrefs are relative to the folder.
    """
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from rasterio.crs import CRS

    grid = summary["grid"]
    geom, bbox, native = _footprint(grid)
    before = _parse_when(summary["inputs"]["before"].get("datetime"))
    after = _parse_when(summary["inputs"]["after"].get("datetime"))
    when = after or before or _parse_when(summary["created"])
    both = before is not None and after is not None
    props: dict[str, Any] = {"changedet:version": summary["changedet_version"],
                             "changedet:detections": len(summary["detections"]),
                             "changedet:changed_area_m2": summary["changed_area_m2"],
                             # where datetime came from: the after (or before) image, or the run when neither is dated
                             "changedet:datetime_source": "after" if after else "before" if before else "run"}
    item = pystac.Item(summary["site"], geom, bbox, when, props,
                       start_datetime=min(before, after) if both else None,  # type: ignore[type-var]
                       end_datetime=max(before, after) if both else None)  # type: ignore[type-var]
    if native is not None:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        crs = CRS.from_user_input(grid["crs"])
        epsg = crs.to_epsg()
        proj.apply(epsg=epsg, wkt2=None if epsg else crs.to_wkt(version="WKT2_2019"),
                   shape=[grid["height"], grid["width"]], transform=list(grid["transform"][:6]), bbox=native)
    for name in files:
        key = name.split(".", 1)[0]  # change_mask; a sidecar or a second format of one stem gets its whole name
        key = key if key not in item.assets and name.count(".") == 1 else name.replace(".", "_")
        item.add_asset(key, pystac.Asset(
            f"./{name}", media_type=MEDIA_TYPES.get(Path(name).suffix), roles=ROLES.get(name, ["data"])))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def batch_collection(collection_id: str, items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The STAC Collection of a batch (``collection.json``) linking each site's ``<name>/item.json``.

    Parameters
    ----------
    collection_id : the collection's id (the manifest's name).
    items : site name → that site's ``item.json`` content, in manifest order.
    """
    import pystac

    boxes = [it["bbox"] for it in items.values() if it.get("bbox")]
    bbox = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
            if boxes else [-180.0, -90.0, 180.0, 90.0])
    times = [t for it in items.values() for key in ("start_datetime", "datetime", "end_datetime")
             if (t := _parse_when(it["properties"].get(key))) is not None]
    extent = pystac.Extent(pystac.SpatialExtent([bbox]),
                           pystac.TemporalExtent([[min(times), max(times)] if times else [None, None]]))
    col = pystac.Collection(collection_id, f"changedet batch {collection_id}: {len(items)} sites", extent,
                            license="other")
    for name in items:
        col.add_link(pystac.Link("item", f"./{name}/item.json", media_type=pystac.MediaType.GEOJSON, title=name))
    return col.to_dict(include_self_link=False, transform_hrefs=False)


def dumps(doc: dict[str, Any]) -> str:
    """A STAC document as written: indented, key order kept, a final newline."""
    return json.dumps(doc, indent=2) + "\n"
