"""The report page of a run: ``report.html``, one self-contained page per site.

Pure rendering: from the run's summary (the dict written to ``summary.json``) and the quick-look
panels, a string of HTML with every image inline (``data:`` URIs), its CSS and its script, so the
page opens from a disk or a mail attachment without a network. The pipeline writes it.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .quicklook import COLOURS, Outline, at_right, furniture, place_labels, scale_length_px

#: chips are embedded for at most this many detections (highest confidence first) ...
MAX_CHIPS = 400
#: ... and until their PNG bytes reach this total, so a page of 400 detections stays a few MB
MAX_CHIP_BYTES = 2_000_000
#: long side of a chip of one date, in panel pixels (a larger object is shrunk to it)
CHIP_PX = 40
PANEL_JPEG_QUALITY = 88


def _hex(cls: str) -> str:
    b, g, r = COLOURS.get(cls, COLOURS["other"])
    return f"#{r:02x}{g:02x}{b:02x}"


def _uri(picture: np.ndarray, ext: str, quality: int = PANEL_JPEG_QUALITY) -> str:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, buf = cv2.imencode(ext, picture, params)
    if not ok:
        raise ValueError(f"could not encode a {picture.shape} {picture.dtype} picture as {ext}")
    mime = "image/jpeg" if ext == ".jpg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def chip(before: np.ndarray, after: np.ndarray, outline: Outline, size_px: int = CHIP_PX) -> np.ndarray:
    """Before and after around one detection, side by side with its outline: (h, 2w + 2, 3) uint8 BGR.

    The window is the outline's bounding box grown by half its size (at least 12 px a side), made
    square and kept inside the panel; shrunk to ``size_px`` when larger (an enlargement is left to
    the page, which shows chips pixelated).
    """
    h, w = before.shape[:2]
    x0, y0 = outline.points.min(axis=0)
    x1, y1 = outline.points.max(axis=0)
    side = int(max(x1 - x0, y1 - y0) * 1.5) + 24
    side = min(side, h, w)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    c0 = int(np.clip(cx - side // 2, 0, w - side))
    r0 = int(np.clip(cy - side // 2, 0, h - side))
    pts = (outline.points - [c0, r0]).reshape(-1, 1, 2).astype(np.int32)
    colour = COLOURS.get(outline.cls, COLOURS["other"])
    out = []
    for panel in (before, after):
        crop = panel[r0:r0 + side, c0:c0 + side].copy()
        cv2.polylines(crop, [pts], True, colour, 1, cv2.LINE_8)
        if side > size_px:
            crop = cv2.resize(crop, (size_px, size_px), interpolation=cv2.INTER_AREA)
        out.append(crop)
    gap = np.full((out[0].shape[0], 2, 3), 255, np.uint8)
    return np.hstack([out[0], gap, out[1]])


def _svg_overlay(outlines: list[Outline], shape: tuple[int, int], metres_per_px: float | None,
                 north_deg: float | None, departed_only: bool) -> str:
    h, w = shape
    parts = [f'<svg class="ov" viewBox="0 0 {w} {h}" preserveAspectRatio="none">']
    bar, corner = furniture(shape, metres_per_px, north_deg, outlines)
    parts.extend(_furniture(shape, metres_per_px, north_deg, bar, corner))
    for o in outlines:
        if departed_only and o.event != "departed":
            continue
        pts = " ".join(f"{x},{y}" for x, y in o.points.tolist())
        dash = ' stroke-dasharray="4 3"' if o.event == "departed" else ""
        parts.append(f'<polygon class="det" data-id="{o.id}" points="{pts}" stroke="{_hex(o.cls)}"{dash}>'
                     f"<title>#{o.id} {html.escape(o.cls)} {html.escape(o.event)}</title></polygon>")
    shown = [o for o in outlines if o.event == "departed" or not departed_only]
    reserved = [b for b in (bar, corner) if b is not None]
    for did, (x, y) in sorted(place_labels(shown, shape, reserved=reserved).items()):
        cls = next(o.cls for o in shown if o.id == did)
        parts.append(f'<text class="lab" x="{x}" y="{y}" fill="{_hex(cls)}">{did}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _size(rec: dict[str, Any], unit: str = "px") -> str | None:
    w, h = rec.get("width"), rec.get("height")
    return f"{w} × {h} {unit}" if w is not None and h is not None else None


def _furniture(shape: tuple[int, int], metres_per_px: float | None, north_deg: float | None,
               bar: tuple[int, int, int, int] | None, corner: tuple[int, int, int, int] | None) -> list[str]:
    h, w = shape
    parts: list[str] = []
    if metres_per_px:
        length_m, _ = scale_length_px(shape, metres_per_px)
        n = length_m / metres_per_px
        label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
        y = h - 14
        width = max(n, 40) + 12
        x = w - 4 - width if at_right(bar) else 4  # the bottom corner scale_box chose
        parts.append(f'<g class="furn"><rect x="{x:.1f}" y="{y - 22}" width="{width:.1f}" height="32" fill="#fff"/>'
                     f'<rect x="{x + 6:.1f}" y="{y}" width="{n:.1f}" height="5" fill="#000"/>'
                     f'<rect x="{x + 6 + n / 2:.1f}" y="{y + 1}" width="{n / 2 - 1:.1f}" height="3" fill="#fff"/>'
                     f'<text x="{x + 6:.1f}" y="{y - 6}">{label}</text></g>')
    if north_deg is not None and corner is not None:
        x0, y0, x1, _ = corner
        parts.append(f'<g class="furn" transform="translate({x0 + 30 if x1 == w else x0 + 26} {y0 + 32})">'
                     f'<circle r="24" fill="#fff"/>'
                     f'<g transform="rotate({north_deg:.2f})"><path d="M0,-6 L6,17 L0,12 L-6,17 Z" fill="#000"/>'
                     f'<text x="-4.5" y="-9" fill="#b00000">N</text></g></g>')
    return parts


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    cells = []
    for k, v in rows:
        if v is None or v == "" or v == []:
            continue
        text = v if isinstance(v, str) else json.dumps(v)
        cells.append(f"<tr><th>{html.escape(k)}</th><td>{html.escape(text)}</td></tr>")
    return '<table class="kv">' + "".join(cells) + "</table>"


def _facts(summary: dict[str, Any]) -> str:
    inputs = summary.get("inputs", {})
    out = ['<section class="facts"><div><h2>Inputs</h2>']
    for which in ("before", "after"):
        rec = inputs.get(which, {})
        out.append(f"<h3>{which}</h3>" + _kv([("file", Path(str(rec.get("path", ""))).name),
                                                ("date", rec.get("datetime")), ("crs", rec.get("crs")),
                                                ("size", _size(rec)),
                                                ("resolution", rec.get("resolution")), ("bands", rec.get("bands")),
                                                ("sha256", str(rec.get("sha256") or "")[:16])]))
    grid = summary.get("grid", {})
    gsd = grid.get("gsd_m")
    out.append("<h3>grid</h3>" + _kv([("crs", grid.get("crs")), ("gsd", f"{gsd} m" if gsd is not None else None),
                                      ("size", _size(grid))]))
    reg = summary.get("registration", {})
    out.append("</div><div><h2>Registration</h2>" + _kv(
        [(k, reg.get(k)) for k in ("method", "applied", "shift_px", "rotation_deg", "scale", "residual_px",
                                   "confidence", "n_tiepoints", "local_field")]))
    rad = summary.get("radiometry", {})
    out.append("<h2>Radiometry</h2>" + _kv(
        [(k, rad.get(k)) for k in ("method", "gains", "offsets", "n_pixels_used", "vegetation", "noise")]))
    out.append("</div><div><h2>Result</h2>" + _kv(
        [("detections", str(len(summary.get("detections", [])))), ("per class", summary.get("counts")),
         ("changed area", f"{summary['changed_area_m2']} m²" if "changed_area_m2" in summary else None),
         ("observable", summary.get("observable_fraction")), ("threshold", summary.get("threshold")),
         ("changedet", summary.get("changedet_version"))]))
    warns = summary.get("warnings") or []
    out.append(f"<h2>Warnings ({len(warns)})</h2>")
    out.append("<ul class='warn'>" + "".join(f"<li>{html.escape(str(w))}</li>" for w in warns) + "</ul>"
               if warns else "<p>none</p>")
    out.append("</div></section>")
    return "".join(out)


def _num(v: Any, digits: int) -> tuple[str, str]:
    """(sort key, shown text) of a number, empty for a missing one."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v)), f"{v:.{digits}f}"
    return "", ""


def _table(records: list[dict[str, Any]], chips: dict[int, str]) -> str:
    cols = [("id", "num"), ("class", "text"), ("event", "text"), ("confidence", "num"), ("area m²", "num"),
            ("length m", "num"), ("width m", "num"), ("orientation °", "num"), ("before | after", "none")]
    head = "".join(f'<th data-type="{t}">{html.escape(c)}</th>' for c, t in cols)
    rows = []
    for r in records:
        did = int(r.get("id", 0))
        cells = [f'<td data-v="{did}">{did}</td>',
                 f'<td data-v="{html.escape(str(r.get("class")))}"><span class="sw" '
                 f'style="background:{_hex(str(r.get("class")))}"></span>{html.escape(str(r.get("class")))}</td>',
                 f'<td data-v="{html.escape(str(r.get("event")))}">{html.escape(str(r.get("event")))}</td>']
        for key, digits in (("confidence", 2), ("area_m2", 1), ("length_m", 1), ("width_m", 1),
                            ("orientation_deg", 0)):
            k, text = _num(r.get(key), digits)
            cells.append(f'<td data-v="{k}">{text}</td>')
        img = chips.get(did)
        cells.append(f'<td><img class="chip" alt="#{did}" src="{img}"></td>' if img else "<td>–</td>")
        rows.append(f'<tr data-id="{did}">' + "".join(cells) + "</tr>")
    return (f'<table id="dets" class="dets"><thead><tr>{head}</tr></thead><tbody>' + "".join(rows)
            + "</tbody></table>")


def _chips(before: np.ndarray, after: np.ndarray, outlines: list[Outline], records: list[dict[str, Any]],
           max_chips: int, max_bytes: int) -> dict[int, str]:
    conf = {int(r.get("id", 0)): float(r.get("confidence") or 0.0) for r in records}
    order = sorted(outlines, key=lambda o: (-conf.get(o.id, 0.0), o.id))
    out: dict[int, str] = {}
    used = 0
    for o in order[:max_chips]:
        uri = _uri(chip(before, after, o), ".png")
        if used + len(uri) > max_bytes:
            break
        out[o.id] = uri
        used += len(uri)
    return out


def _legend(counts: dict[str, int]) -> str:
    items = "".join(f'<span><span class="sw" style="background:{_hex(c)}"></span>{html.escape(c)} '
                    f"({counts.get(c, 0)})</span>" for c in COLOURS)
    return (f'<div class="legend">{items}<span><span class="sw dash"></span>dashed = departed</span>'
            '<label><input type="checkbox" id="show" checked> show detections</label></div>')


def render_html(summary: dict[str, Any], before: np.ndarray, after: np.ndarray, outlines: list[Outline],
                metres_per_px: float | None = None, north_deg: float | None = None, *,
                max_chips: int = MAX_CHIPS, max_chip_bytes: int = MAX_CHIP_BYTES) -> str:
    """The report page of one run, as a string of self-contained HTML.

    Parameters
    ----------
    summary : the run's summary (``summary.json``): site, inputs, grid, registration, radiometry,
        counts, detections, warnings are shown.
    before, after : (h, w, 3) uint8 BGR quick-look panels of the same size.
    outlines : the detections in panel pixels (ids as in ``summary["detections"]``).
    metres_per_px : ground size of a panel pixel, for the scale bar.
    north_deg : true north, clockwise from the panel's up, for the north arrow.
    max_chips, max_chip_bytes : at most this many zoomed chips (highest confidence first), and no more
        once their encoded size reaches ``max_chip_bytes``; the others show a dash.

    Returns
    -------
    The page; the same inputs give the same bytes. The run's clock (``created``, ``timings_s``) is
    left out, so two runs of the same inputs write the same page.
    """
    if before.shape != after.shape or before.ndim != 3 or before.shape[2] != 3 or before.dtype != np.uint8:
        raise ValueError(f"panels must be two (h, w, 3) uint8 arrays of one shape, got {before.shape} "
                         f"{before.dtype} and {after.shape} {after.dtype}")
    records = list(summary.get("detections", []))
    site = html.escape(str(summary.get("site", "")))
    inputs = summary.get("inputs", {})
    dates = [html.escape(str(inputs.get(k, {}).get("datetime") or Path(str(inputs.get(k, {}).get("path", ""))).name))
             for k in ("before", "after")]
    shape = before.shape[:2]
    chips = _chips(before, after, outlines, records, max_chips, max_chip_bytes)
    counts = summary.get("counts") or {c: sum(o.cls == c for o in outlines) for c in COLOURS}
    shown = (f"{len(chips)} of {len(records)} detections have a chip (highest confidence first)"
             if len(chips) < len(records) else "")
    return _PAGE.format(
        site=site, css=_CSS, js=_JS, date_before=dates[0], date_after=dates[1],
        img_before=_uri(before, ".jpg"), img_after=_uri(after, ".jpg"),
        ov_before=_svg_overlay(outlines, shape, metres_per_px, north_deg, True),
        ov_after=_svg_overlay(outlines, shape, metres_per_px, north_deg, False),
        legend=_legend(counts), facts=_facts(summary), n=len(records), chip_note=html.escape(shown),
        table=_table(records, chips), aspect=f"{shape[1]} / {shape[0]}")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:12px 0 4px}h3{font-size:13px;margin:8px 0 2px}
.pair{display:flex;gap:8px}.pair figure{flex:1;margin:0}
.pane{position:relative;aspect-ratio:var(--aspect);background:#000}
.pane img{position:absolute;inset:0;width:100%;height:100%;image-rendering:pixelated}
.ov{position:absolute;inset:0;width:100%;height:100%}
.det{fill:none;stroke-width:2;vector-effect:non-scaling-stroke}
.det.hl{stroke-width:5;stroke:#ff0!important}
.ov text{font:bold 12px sans-serif}
.furn{opacity:.85}
.ov .lab{font:bold 11px sans-serif;paint-order:stroke;stroke:#fff;stroke-width:3px}
.hide .det,.hide .lab{display:none}
figcaption{font-weight:600;padding:2px 0}
.legend{display:flex;gap:16px;flex-wrap:wrap;margin:6px 0}
.sw{display:inline-block;width:14px;height:14px;margin-right:4px;vertical-align:-2px;border:1px solid #555}
.sw.dash{background:repeating-linear-gradient(90deg,#555 0 4px,#fff 4px 7px);height:4px;vertical-align:3px}
.facts{display:grid;grid-template-columns:repeat(3,1fr);gap:16px}
.kv{border-collapse:collapse;font-size:12px}.kv th{text-align:left;padding:1px 8px 1px 0;color:#555;font-weight:500}
.kv td{word-break:break-all}
.warn li{color:#8a4b00}
.dets{border-collapse:collapse;font-size:13px}
.dets th,.dets td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
.dets th{cursor:pointer;background:#eee;position:sticky;top:0}
.dets th[data-type=none]{cursor:default}
.dets th.asc::after{content:" ▲"}.dets th.desc::after{content:" ▼"}
.dets tr:hover,.dets tr.hl{background:#fff3b0}
.chip{height:64px;image-rendering:pixelated;display:block}
"""

_JS = """
(function(){
  var t=document.getElementById('dets');
  t.querySelectorAll('th').forEach(function(th,i){
    var type=th.dataset.type; if(type==='none')return;
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v, y=b.cells[i].dataset.v, r;
        if(type==='num'){x=x===''?-Infinity:+x;y=y===''?-Infinity:+y;r=x-y;}
        else{r=x<y?-1:x>y?1:0;}
        if(r===0)r=(+a.dataset.id)-(+b.dataset.id);
        return asc?r:-r;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  function mark(id,on){document.querySelectorAll('.det[data-id="'+id+'"]').forEach(function(p){
    p.classList.toggle('hl',on);});}
  t.tBodies[0].addEventListener('mouseover',function(e){var tr=e.target.closest('tr');if(tr)mark(tr.dataset.id,true);});
  t.tBodies[0].addEventListener('mouseout',function(e){var tr=e.target.closest('tr');if(tr)mark(tr.dataset.id,false);});
  document.querySelectorAll('.det').forEach(function(p){p.addEventListener('click',function(){
    var tr=t.querySelector('tr[data-id="'+p.dataset.id+'"]');
    if(tr){tr.scrollIntoView({block:'center'});tr.classList.add('hl');setTimeout(function(){tr.classList.remove('hl');},1500);}
  });});
  document.getElementById('show').addEventListener('change',function(e){
    document.querySelectorAll('.pair').forEach(function(p){p.classList.toggle('hide',!e.target.checked);});});
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>changedet report: {site}</title>
<style>{css}</style></head>
<body style="--aspect:{aspect}">
<h1>changedet report: {site}</h1>
<div class="pair">
<figure><figcaption>before {date_before} (departed outlined)</figcaption>
<div class="pane"><img alt="before" src="{img_before}">{ov_before}</div></figure>
<figure><figcaption>after {date_after} (registered, detections)</figcaption>
<div class="pane"><img alt="after" src="{img_after}">{ov_after}</div></figure>
</div>
{legend}
{facts}
<h2>Detections ({n})</h2>
<p class="note">Click a column to sort; point at a row to mark its outline; click an outline to find its row. {chip_note}</p>
{table}
<script>{js}</script>
</body></html>
"""


def render_index(batch: dict[str, Any], out_dir: str | Path | None = None) -> str:
    """The index page of a batch: one row per site, linking its ``report.html``.

    ``batch`` is the batch record (``batch_summary.json``); links are relative to the batch's
    folder, so the folder can be moved as a whole. With ``out_dir``, a site whose report is not
    there (a failed site) gets no link.
    """
    rows = []
    for rec in batch.get("sites", []):
        name = html.escape(str(rec.get("name", "")))
        has = out_dir is None or (Path(out_dir) / str(rec.get("name", "")) / "report.html").is_file()
        link = f'<a href="{name}/report.html">{name}</a>' if has and rec.get("status") in ("ok", "skipped") else name
        n = rec.get("n_detections")
        area = rec.get("changed_area_m2")
        rows.append(f'<tr class="{html.escape(str(rec.get("status")))}"><td>{link}</td>'
                    f'<td>{html.escape(str(rec.get("status")))}</td>'
                    f'<td data-v="{n if n is not None else ""}">{n if n is not None else ""}</td>'
                    f'<td data-v="{area if area is not None else ""}">{area if area is not None else ""}</td>'
                    f'<td>{html.escape(str(rec.get("error") or ""))}</td></tr>')
    return _INDEX.format(css=_CSS, n_ok=batch.get("n_ok", 0), n_skipped=batch.get("n_skipped", 0),
                         n_failed=batch.get("n_failed", 0), created=html.escape(str(batch.get("created", ""))),
                         manifest=html.escape(str(batch.get("manifest", ""))), rows="".join(rows))


_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>changedet batch</title>
<style>{css}
.ok td:first-child a{{font-weight:600}}.failed,.error{{color:#a00}}.dets td:first-child,.dets td:last-child{{text-align:left}}
</style></head>
<body><h1>changedet batch</h1>
<p>{manifest}, {created}: {n_ok} ok, {n_skipped} skipped (current), {n_failed} failed.</p>
<table class="dets"><thead><tr><th>site</th><th>status</th><th>detections</th><th>changed area m²</th><th>error</th>
</tr></thead><tbody>{rows}</tbody></table>
</body></html>
"""
