import pytest
import numpy as np

from changedet import quicklook


def test_departed_objects_are_outlined_on_the_before_panel_too():
    before = np.zeros((100, 100, 3), np.uint8)
    after = np.zeros((100, 100, 3), np.uint8)
    square = np.array([[20, 20], [60, 20], [60, 60], [20, 60]], np.int32)
    gone = quicklook.render(before, after, [quicklook.Outline(1, "vessel", "departed", square)], {"vessel": 1})
    new = quicklook.render(before, after, [quicklook.Outline(1, "vessel", "appeared", square)], {"vessel": 1})
    before_panel = slice(28 + 15, 28 + 65), slice(15, 65)
    assert gone[before_panel].any() and not new[before_panel].any()
    assert gone.shape == new.shape


def _many_outlines(n, size, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = rng.integers(0, size - 30, 2)
        w, h = rng.integers(3, 25, 2)
        pts = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.int32)
        out.append(quicklook.Outline(i + 1, ["hut", "vessel", "trench", "other"][i % 4], "appeared", pts))
    return out


def test_ids_are_placed_without_overlap_inside_the_panel():
    import cv2

    outlines = _many_outlines(400, 1000)
    where = quicklook.place_labels(outlines, (1000, 1000))
    assert 0 < len(where) < 400  # 400 boxes on a 1000 px panel: some ids cannot fit
    boxes = []
    for did, (x, y) in where.items():
        (tw, th), base = cv2.getTextSize(str(did), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 3)
        assert x >= 0 and y - th - 1 >= 0 and x + tw < 1000 and y + base < 1000
        boxes.append((x, y - th - 1, x + tw, y + base))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)
    assert quicklook.place_labels(outlines, (1000, 1000)) == where  # deterministic
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.int32)
    few = [quicklook.Outline(k + 1, "hut", "appeared", square + [100 + 200 * k, 100 + 200 * k]) for k in range(3)]
    assert len(quicklook.place_labels(few, (1000, 1000))) == 3  # apart: every id shown


@pytest.mark.parametrize("m_per_px,max_px,expected", [(0.5, 120, 50.0), (3.0, 100, 200.0), (0.01, 50, 0.5),
                                                      (10.0, 250, 2000.0), (1.0, 100, 100.0)])
def test_scale_bar_length_is_round_and_fits(m_per_px, max_px, expected):
    assert quicklook.round_length_m(m_per_px, max_px) == pytest.approx(expected)


def test_scale_bar_and_north_arrow_are_drawn_only_when_known():
    panel = np.full((200, 200, 3), 128, np.uint8)
    plain = quicklook.render(panel, panel, [], {})
    dressed = quicklook.render(panel, panel, [], {}, dates=("2024-01-02", "2024-06-30"), metres_per_px=0.5,
                               north_deg=0.0)
    assert plain.shape == dressed.shape
    corner = slice(28 + 170, 28 + 200), slice(0, 60)  # bottom-left of the before panel: the scale bar
    assert (plain[corner] == 128).all() and (dressed[corner] == 0).any()
    top_right = slice(28, 28 + 60), slice(150, 200)
    assert (plain[top_right] == 128).all() and (dressed[top_right] == 255).any()
    titles = slice(0, 28), slice(0, 200)
    assert not np.array_equal(plain[titles], dressed[titles])  # the date is written in the title


def test_north_arrow_goes_to_the_corner_with_the_fewest_detections():
    shape = (200, 300)
    square = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], np.int32)
    top_right = quicklook.Outline(1, "hut", "appeared", square + [250, 5])
    top_left = quicklook.Outline(2, "hut", "appeared", square + [5, 5])
    assert quicklook.north_box(shape) == (240, 0, 300, 62)  # nothing drawn: top right
    assert quicklook.north_box(shape, [top_right]) == (0, 0, 60, 62)
    assert quicklook.north_box(shape, [top_right, top_left]) == (240, 138, 300, 200)
    assert quicklook.north_box(shape, [top_right]) in quicklook.furniture_boxes(shape, 0.5, 0.0, [top_right])
    # drawn there on every panel, and the detection's corner is left as it was
    panel = np.full((200, 300, 3), 128, np.uint8)
    bare = quicklook.render(panel, panel, [top_right], {"hut": 1})
    pic = quicklook.render(panel, panel, [top_right], {"hut": 1}, north_deg=0.0)
    for x in (0, 300 + 6, 2 * (300 + 6)):  # before, after, detections
        was, now = bare[28:228, x:x + 300], pic[28:228, x:x + 300]
        assert not np.array_equal(was[0:62, 0:60], now[0:62, 0:60])
        assert np.array_equal(was[0:62, 240:300], now[0:62, 240:300])


@pytest.mark.parametrize("crs,transform,expected", [
    ("EPSG:4326", (0.001, 0, 30.0, 0, -0.001, 10.0), 0.0),  # geographic, north up
    ("EPSG:32637", (0.5, 0, 500000.0 - 128, 0, -0.5, 3512000.0), 0.0),  # on the central meridian
    ("EPSG:32637", (0.5, 0, 500000.0 - 128, 0, 0.5, 3512000.0), 180.0),  # rows run north: south is up
])
def test_north_angle_of_plain_grids(crs, transform, expected):
    got = quicklook.north_angle_deg(crs, transform, 256, 256)
    assert abs((got - expected + 180) % 360 - 180) < 0.05


def test_north_angle_of_a_rotated_grid_and_of_grid_convergence():
    t = np.deg2rad(30.0)  # columns turned 30 deg anticlockwise from east: north is 30 deg clockwise from up
    a, b, d, e = 0.5 * np.cos(t), 0.5 * np.sin(t), 0.5 * np.sin(t), -0.5 * np.cos(t)
    assert quicklook.north_angle_deg("EPSG:32637", (a, b, 500000.0, d, e, 3512000.0), 256, 256) == \
        pytest.approx(30.0, abs=0.05)
    # 3 deg east of zone 37's central meridian (39 E) at 45 N: grid north lies ~2.1 deg east of true north
    from rasterio.warp import transform

    (x,), (y,) = transform("EPSG:4326", "EPSG:32637", [42.0], [45.0])
    got = quicklook.north_angle_deg("EPSG:32637", (1.0, 0, x - 128, 0, -1.0, y + 128), 256, 256)
    assert got == pytest.approx(-np.degrees(np.arctan(np.tan(np.deg2rad(3.0)) * np.sin(np.deg2rad(45.0)))), abs=0.05)
    assert quicklook.north_angle_deg(None, (1, 0, 0, 0, -1, 0), 10, 10) is None
    local = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    assert quicklook.north_angle_deg(local, (1, 0, 0, 0, -1, 0), 10, 10) is None


def test_a_panel_of_400_detections_says_how_many_ids_it_shows(tmp_path):
    panel = np.full((1000, 1000, 3), 128, np.uint8)
    outlines = _many_outlines(400, 1000)
    pic = quicklook.render(panel, panel, outlines, {"hut": 100, "vessel": 100, "trench": 100, "other": 100},
                           "many", metres_per_px=0.5, north_deg=10.0)
    (tmp_path / "quicklook_400.png").write_bytes(quicklook.encode_png(pic))
    print(tmp_path / "quicklook_400.png")
    shown = len(quicklook.place_labels(outlines, (1000, 1000)))
    assert shown < 400
    plain = quicklook.render(panel, panel, outlines[:1], {"hut": 1})
    legend = slice(pic.shape[0] - 30, pic.shape[0])
    assert (pic[legend] < 128).sum() > (plain[legend] < 128).sum()  # the "ids: n of 400 shown" note


def test_hidden_mask_shrunk_by_strips_equals_whole(monkeypatch):
    """The panel's not-observable hatch is shrunk from the whole-scene mask strip by strip (a 40000²
    mask is never held at once); where strips end on whole output rows it equals one resize."""
    import cv2

    from changedet import io, pipeline

    rng = np.random.default_rng(4)
    mask = (rng.random((200, 150)) < 0.3).astype(np.uint8)
    monkeypatch.setattr(io, "_DECIMATE_STRIP_BYTES", 150 * 4 * 30)  # 30 rows a strip: 3 output rows
    assert io.strip_rows(150, 1) == 30
    whole = cv2.resize(mask, (15, 20), interpolation=cv2.INTER_AREA)
    assert np.array_equal(pipeline._shrink_by_strips(mask, (20, 15)), whole)
    assert np.array_equal(pipeline._shrink_by_strips(mask, (400, 300)),
                          cv2.resize(mask, (300, 400), interpolation=cv2.INTER_AREA))


def test_scale_bar_goes_to_the_bottom_corner_with_fewer_detections():
    shape = (200, 300)
    square = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], np.int32)
    bottom_left = quicklook.Outline(1, "hut", "appeared", square + [5, 155])
    assert quicklook.scale_box(shape, 0.5) == (0, 160, 104, 200)  # nothing drawn: bottom left, 20 m = 40 px
    bar = quicklook.scale_box(shape, 0.5, [bottom_left])
    assert bar == (196, 160, 300, 200)
    # the north arrow keeps to the corners the bar left: with the top ones taken, the bottom left
    top_right = quicklook.Outline(2, "hut", "appeared", square + [250, 5])
    top_left = quicklook.Outline(3, "hut", "appeared", square + [5, 5])
    assert quicklook.north_box(shape, [top_right, top_left], bar) == (0, 138, 60, 200)
    assert quicklook.north_box(shape, [top_right, top_left]) == (240, 138, 300, 200)
    assert quicklook.furniture_boxes(shape, 0.5, 0.0, [bottom_left]) == [bar, (240, 0, 300, 62)]
    # drawn there on every panel; the detection's corner is left as it was
    panel = np.full((200, 300, 3), 128, np.uint8)
    bare = quicklook.render(panel, panel, [bottom_left], {"hut": 1})
    pic = quicklook.render(panel, panel, [bottom_left], {"hut": 1}, metres_per_px=0.5)
    for x in (0, 300 + 6, 2 * (300 + 6)):  # before, after, detections
        was, now = bare[28:228, x:x + 300], pic[28:228, x:x + 300]
        assert np.array_equal(was[160:200, 0:104], now[160:200, 0:104])
        assert (now[160:200, 196:300] == 0).any() and (now[160:200, 196:300] == 255).any()
