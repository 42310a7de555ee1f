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
