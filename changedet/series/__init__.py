"""``changedet series``: a dated stack of one site -> presence per date, tracks, ship-days (issue 14).

Modules: :mod:`.dates` (which image is which date), :mod:`.stack` (registration onto the reference
grid, scratch rasters), :mod:`.background` (temporal median, what stands out), :mod:`.presence`
(candidates and their per-date state), :mod:`.tracks` (runs, events), :mod:`.engine` (the passes),
:mod:`.record` and :mod:`.timeline` (outputs), :mod:`.run` (``run_series``).
"""

from .run import OUTPUT_FILES, SeriesResult, run_series, series_schema

__all__ = ["OUTPUT_FILES", "SeriesResult", "run_series", "series_schema"]
