"""The report page: structure, size at 400 detections, the batch index, and a real headless browser."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from changedet import quicklook, report
from changedet.pipeline import detect_pair

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _scene(n, size=1000, seed=0):
    rng = np.random.default_rng(seed)
    before = rng.integers(40, 200, (size, size, 3)).astype(np.uint8)  # noise: the hardest case for chip size
    after = before.copy()
    outlines, records = [], []
    for i in range(n):
        x, y = (int(v) for v in rng.integers(0, size - 30, 2))
        w, h = (int(v) for v in rng.integers(3, 25, 2))
        pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.int32)
        after[y:y + h, x:x + w] = 250
        cls = ["hut", "vessel", "trench", "other"][i % 4]
        ev = "departed" if i % 5 == 0 else "appeared"
        outlines.append(quicklook.Outline(i + 1, cls, ev, pts))
        records.append({"id": i + 1, "class": cls, "event": ev, "confidence": round(float(rng.random()), 3),
                        "area_m2": float(w * h), "length_m": float(max(w, h)), "width_m": float(min(w, h)),
                        "orientation_deg": 0.0})
    summary = {"site": "many", "inputs": {"before": {"path": "/x/b.tif", "datetime": "2024-01-02T10:00:00Z"},
                                          "after": {"path": "/x/a.tif"}},
               "grid": {"crs": "EPSG:32637", "width": size, "height": size, "gsd_m": 0.5},
               "registration": {"method": "translation", "shift_px": [1.5, -2.0], "confidence": 0.9},
               "radiometry": {"method": "linear", "gains": [1.0, 1.1, 0.9]},
               "counts": {c: n // 4 for c in ("hut", "vessel", "trench", "other")}, "changed_area_m2": 12.5,
               "detections": records, "warnings": ["registration <b>residual</b> high"]}
    return summary, before, after, outlines


def _rows(page):
    body = page[page.index('<table id="dets"'):]
    body = body[body.index("<tbody>"):body.index("</tbody>")]
    return re.findall(r'<tr data-id="(\d+)"', body)


def test_report_is_self_contained_and_lists_every_detection():
    summary, before, after, outlines = _scene(40)
    page = report.render_html(summary, before, after, outlines, 0.5, 0.0)
    assert sorted(map(int, _rows(page))) == list(range(1, 41))
    assert "<script>" in page and "sort(" in page and 'data-type="num"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from a network
    assert page.count('src="data:image/jpeg;base64,') == 2 and page.count('class="chip"') == 40
    assert page.count('class="det"') == 40 + 8  # every outline on after, the 8 departed on before too
    assert "2024-01-02" in page and "a.tif" in page  # the date when known, else the file name
    assert "&lt;b&gt;residual&lt;/b&gt;" in page and "<b>residual" not in page
    assert "shift_px" in page and "[1.5, -2.0]" in page and ">100 m<" in page  # scale bar: at most 0.5 m x 1000 px / 4, round
    assert report.render_html(summary, before, after, outlines, 0.5, 0.0) == page  # deterministic


def test_report_of_400_detections_stays_a_few_megabytes(tmp_path):
    summary, before, after, outlines = _scene(400)
    page = report.render_html(summary, before, after, outlines, 0.5, 0.0)
    (tmp_path / "report.html").write_text(page)
    print(tmp_path / "report.html", len(page))
    assert len(_rows(page)) == 400
    assert len(page) < report.MAX_CHIP_BYTES + 3_000_000
    chips = page.count('class="chip"')
    assert 0 < chips <= 400
    capped = report.render_html(summary, before, after, outlines, 0.5, 0.0, max_chips=10)
    assert capped.count('class="chip"') == 10 and "10 of 400 detections have a chip" in capped
    # the chips kept are those of highest confidence
    kept = {int(m) for m in re.findall(r'alt="#(\d+)"', capped)}
    best = sorted(summary["detections"], key=lambda r: (-r["confidence"], r["id"]))[:10]
    assert kept == {r["id"] for r in best}


def test_report_rejects_panels_of_different_shapes():
    summary, before, after, outlines = _scene(2, size=100)
    with pytest.raises(ValueError, match="panels"):
        report.render_html(summary, before, after[:50], outlines)


def test_batch_index_links_reports_of_sites_that_ran(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.html").write_text("x")
    batch = {"manifest": "m.yaml", "created": "now", "n_ok": 1, "n_skipped": 0, "n_failed": 1,
             "sites": [{"name": "a", "status": "ok", "n_detections": 3, "changed_area_m2": 1.0, "error": None},
                       {"name": "b", "status": "failed", "n_detections": None, "changed_area_m2": None,
                        "error": "b.tif: <no> such file"}]}
    page = report.render_index(batch, tmp_path)
    assert 'href="a/report.html"' in page and 'href="b/report.html"' not in page
    assert "&lt;no&gt; such file" in page


def _screenshot(page_path, png_path):
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png_path}", "--window-size=1400,1000", page_path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    import cv2

    picture = cv2.imread(str(png_path))
    assert picture is not None and picture.shape[:2] == (1000, 1400)
    return picture


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_of_a_run_renders_in_a_headless_browser(small_scene, tmp_path):
    res = detect_pair(small_scene / "before.tif", small_scene / "after.tif", tmp_path / "run")
    page_path = res.out_dir / "report.html"
    assert "report.html" in res.summary["files"]
    page = page_path.read_text()
    assert len(_rows(page)) == len(res.summary["detections"])
    picture = _screenshot(page_path, tmp_path / "report.png")
    print(tmp_path / "report.png")
    assert picture.std() > 20  # images, outlines and text, not a blank page
    # the two panels sit side by side in the top half: both are far from the page's plain background
    top = picture[100:600].astype(float)
    assert top[:, 50:650].std() > 10 and top[:, 750:1350].std() > 10


def test_report_overlay_puts_the_scale_bar_where_the_quick_look_does():
    from changedet.quicklook import Outline
    from changedet.report import _svg_overlay

    square = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], np.int32)
    free = _svg_overlay([], (200, 300), 0.5, None, False)
    moved = _svg_overlay([Outline(1, "hut", "appeared", square + [5, 155])], (200, 300), 0.5, None, False)
    assert '<g class="furn"><rect x="4.0"' in free  # bottom left
    assert '<g class="furn"><rect x="244.0"' in moved  # bottom right: 300 - 4 - (40 + 12), 20 m = 40 px
