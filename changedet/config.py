"""Configuration: pydantic models, YAML presets and ``--set`` overrides.

Precedence, lowest first: model defaults (= ``configs/default.yaml``) < preset
< user YAML < ``--set key=value``. Unknown keys and wrong types are errors that
name the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, shown
from .yamlfile import YamlRefused, load_text, read_yaml

PRESET_DIR = Path(__file__).parent / "presets"
#: the coarsest ground sample distance accepted (metres): beyond it, areas overflow into nonsense
MAX_GSD_M = 10_000.0


class _Section(BaseModel):
    # nan and inf pass every bound (gt, le) unnoticed and fail only after a whole run
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RegisterConfig(_Section):
    """Image-based fine registration of ``after`` onto ``before``."""

    enabled: bool = True
    chip_px: int = Field(160, ge=32, le=2048, description="side of a correlation chip, pixels")
    grid: int = Field(6, ge=1, le=16, description="chips per side of the chip grid")
    upsample: int = Field(100, ge=1, le=1000, description="subpixel upsampling of the phase-correlation fallback")
    coarse_max_px: int = Field(512, ge=64, le=8192,
                               description="long side of the decimated image for the coarse search")
    max_shift_frac: float = Field(0.125, gt=0, le=0.5, description="largest shift searched, as a fraction of the tile")
    min_chip_std: float = Field(1e-3, ge=0, description="chips whose relative std is below this are skipped")
    min_confidence: float = Field(0.3, ge=0, le=1, description="below this the registration is flagged")
    model: Literal["auto", "translation", "similarity", "affine"] = Field(
        "auto", description=("global model: translation, similarity (shift, rotation, isotropic scale), affine, "
                             "or auto: the simplest of these the tie points clearly ask for"))
    inlier_px: float = Field(1.0, gt=0, description="tie points further than this from the model are outliers")
    max_weather_frac: float = Field(0.2, ge=0, le=1, description=(
        "chips with more than this share under cloud, cloud shadow or thick haze do not vote; 1 = all vote"))
    local: bool = Field(False, description="add a smooth local displacement field from a tie-point grid")
    local_grid: int = Field(8, ge=3, le=32, description="tie points per side of the local grid")
    local_chip_px: int = Field(64, ge=32, le=1024, description="chip side for the local tie points")
    write_tiepoints: bool = Field(False, description="also write tiepoints.geojson for inspection")


class NormalizeConfig(_Section):
    """Relative radiometric normalization of ``after`` to ``before``."""

    method: Literal["linear", "histogram", "none"] = Field(
        "linear", description="linear (robust gain/offset on no-change pixels), histogram (matching) or none")
    iterations: int = Field(4, ge=1, le=20, description="reweighting rounds of the robust fit")
    reject_sigma: float = Field(3.0, gt=0, description="residuals beyond this many robust sigmas are dropped")
    by_vegetation: bool = Field(True, description=(
        "linear: fit vegetated and bare pixels separately and blend by vegetation index (3+ bands)"))


class MeasureConfig(_Section):
    """Pixel and structural differencing, fused into one 0..1 score."""

    ssim_weight: float = Field(0.25, ge=0, le=1, description="weight of the SSIM evidence in the fusion")
    cva_k: float = Field(4.0, gt=0, description="noise sigmas of change at which the CVA score is 0.5")
    ssim_sigma_px: float = Field(1.0, gt=0, le=32, description="Gaussian window sigma of local SSIM")
    ssim_noise_k: float = Field(2.0, ge=0, description="SSIM stabiliser, in noise sigmas")
    smooth_sigma_px: float = Field(0.0, ge=0, le=32, description="Gaussian smoothing of the fused score")
    brightness_weight: float = Field(1.0, ge=0, le=1, description=(
        "weight of change along each pixel's spectral direction (shadow, haze, vegetation vigour); 1 = plain CVA"))
    tolerance_px: int = Field(1, ge=0, le=3, description=(
        "compare each pixel with the closest after pixel within this distance (residual misregistration)"))
    line_length_px: int = Field(11, ge=0, le=41, description=(
        "line evidence: each band's difference averaged along segments this long, against both sides "
        "(faint thin lines such as trenches); 0 turns it off"))


class DecideConfig(_Section):
    """Threshold, hysteresis and clean-up."""

    method: Literal["otsu", "kittler", "zscore"] = Field(
        "otsu", description="automatic threshold: otsu, kittler (Kittler-Illingworth minimum error) or zscore")
    zscore_k: float = Field(6.0, gt=0, description="zscore method: median + k * robust sigma")
    min_score: float = Field(0.4, ge=0, le=1, description="the threshold never goes below this")
    max_score: float = Field(0.9, ge=0, le=1, description="the threshold never goes above this")
    hysteresis_low_ratio: float = Field(0.75, gt=0, le=1, description="low threshold = ratio * high threshold")
    open_px: int = Field(1, ge=0, le=32, description="radius of the morphological opening")
    close_px: int = Field(1, ge=0, le=32, description="radius of the morphological closing")
    min_area_m2: float = Field(4.0, ge=0, description="smaller changed regions are dropped")
    fill_holes_m2: float = Field(4.0, ge=0, description="holes smaller than this are filled")
    edge_min_cover: float = Field(0.5, ge=0, le=1, description=(
        "outline pixels of a changed region that the object covers less than this share of are dropped "
        "(linear unmixing between the region's interior and its ring); 0 keeps the thresholded outline"))
    line_min_ratio: float = Field(8.0, ge=0, description=(
        "a thin line of change is seeded where its line evidence reaches this many times the pair's "
        "90th percentile of it, and grows down to half that; 0 turns line detection off"))
    line_min_length_m: float = Field(8.0, ge=0, description=(
        "lines found by line evidence are kept only when their centre line is at least this long"))
    false_alarms_per_km2: float = Field(100.0, ge=0, description=(
        "false-alarm budget: a changed region is kept when the expected number of regions at least as "
        "extreme under the pair's own no-change statistics is at most this per km2 (0 = off)"))


class ObjectsConfig(_Section):
    """Connected components, geometry and rule-based typing (thresholds in metres)."""

    trench_min_elongation: float = Field(4.0, gt=1)
    trench_max_width_m: float = Field(6.0, gt=0)
    trench_min_length_m: float = Field(8.0, gt=0)
    trench_max_brightness_change: float = Field(
        0.0, description="a new trench darkens the ground: mean luminance change, noise sigmas, below this")
    thin_max_rectangularity: float = Field(
        0.7, gt=0, le=1, description="a region filling less of its minimum rectangle may be a thin winding line")
    thin_max_width_ratio: float = Field(
        0.65, gt=0, le=1, description="and is one when its width along its skeleton is below this share of the rectangle's width")
    merge_max_gap_m: float = Field(
        8.0, ge=0, description="fragments of one line (a trench cut by a road) are merged across gaps up to this")
    merge_max_angle_deg: float = Field(
        35.0, gt=0, le=90, description="when the line's end points at the other fragment within this angle")
    split_max_neck_ratio: float = Field(
        0.6, ge=0, le=1, description=("touching objects are cut apart where the region narrows to under this share "
                                      "of the narrower object's width; 0 never splits"))
    hut_min_side_m: float = Field(2.0, gt=0)
    hut_max_side_m: float = Field(30.0, gt=0)
    hut_max_elongation: float = Field(8.0, gt=1, description="long sheds and barracks reach 30 x 4 m")
    hut_min_rectangularity: float = Field(0.8, gt=0, le=1, description=(
        "a rasterised rectangle fills over 0.88 of its minimum rectangle; a ragged clearing about 0.73"))
    vessel_min_length_m: float = Field(8.0, gt=0)
    vessel_max_length_m: float = Field(400.0, gt=0)
    vessel_min_elongation: float = Field(2.0, gt=1)
    vessel_min_water_frac: float = Field(0.35, ge=0, le=1, description="share of the ring around it that is water")
    water_max_brightness: float = Field(0.3, gt=0, le=1, description="water is darker than this quantile-normalised level")
    water_max_texture: float = Field(0.08, gt=0, description="and smoother than this local std")
    water_max_green_excess: float = Field(
        0.05, gt=-1, le=1, description="RGB only: water's (G-B)/(G+B) is below this (vegetation is green)")
    water_max_nir: float = Field(0.15, gt=0, le=1, description=(
        "with NIR: water's NIR is below this level of the scene's 2nd..98th percentile range"))
    water_min_area_m2: float = Field(10000.0, ge=0, description=(
        "a water body of real extent; smaller dark patches are not water, and a vessel needs water"))
    shadow_max_ratio: float = Field(
        0.92, gt=0, le=1, description="a new cast shadow keeps less than this share of the light in every band")
    shadow_max_ratio_spread: float = Field(
        0.12, ge=0, description="and dims all bands alike (spread of the after/before band ratios)")
    shadow_max_frac: float = Field(
        0.5, gt=0, le=1, description="a shadow is beside an object: never more than this share of a region")
    ring_px: int = Field(6, ge=1, le=64, description="width of the context ring around an object")
    broad_min_ring_share: float = Field(0.5, gt=0, le=1, description=(
        "a region whose ring changed this much (at half its own score) is part of a broad change "
        "(ploughing, harvest, a clearing): never a hut or a trench"))
    broad_min_area_m2: float = Field(1000.0, ge=0, description=(
        "and is kept (as other) only when at least this large; 0 keeps every fragment"))
    broad_line_min_distinct: float = Field(3.0, ge=0, description=(
        "a smaller long thin fragment (trench elongation) is left out only when it stands out from its ring "
        "by less than this many noise sigmas on both dates (a furrow of a ploughed field, not a trench cut "
        "across it); 0 keeps every long thin fragment"))
    broad_line_min_ring_level: float = Field(0.8, ge=0, description=(
        "and only when the median score of its outer ring reaches this share of its own mean score (the "
        "field around it changed throughout, not in specks of noise); 0: whatever the ring's level"))
    max_objects: int = Field(5000, ge=1, le=1_000_000, description="objects beyond this many (smallest first) are not described")


class ModelConfig(_Section):
    """The learned change probability (a frozen encoder and a trained head, run with onnxruntime)."""

    enabled: bool = Field(True, description="run the learned stage; false gives the classical pipeline alone")
    path: str | None = Field(None, description=(
        "model file written by 'changedet train' (.npz); empty: the default model shipped in the package"))
    gate_score: float = Field(0.0, ge=0, le=1, description=(
        "fusion: the learned probability is scaled by min(1, s / (gate_score * local max of s within 4 px)), "
        "trimming its stride-4 blur to where the classical score s changed; 0 uses the probability alone"))
    veto_probability: float = Field(0.25, ge=0, le=1, description=(
        "fusion: classical change (and line evidence) where the probability is below this is vetoed as irrelevant"))
    guide_radius_px: int = Field(4, ge=0, le=16, description=(
        "fusion: radius of the guided filter that sharpens the probability's stride-4 edges along the "
        "classical score's; 0 upsamples bilinearly only"))
    guide_eps: float = Field(0.001, gt=0, description=(
        "fusion: guided-filter regularisation; a variance of the classical score below this is no edge"))
    region_probability: float = Field(1.0, ge=0, le=2, description=(
        "a changed region whose mean learned probability is below this times the model's threshold keeps "
        "only its pixels that reach it (pieces of 2x2 model cells or more); 0 keeps every region whole"))
    window_px: int = Field(1024, ge=128, le=8192, description="side of a window of the learned stage (multiple of 16)")
    cascade_score: float = Field(0.5, ge=0, le=1, description=(
        "run the model only on windows where the classical score reaches this share of its low threshold "
        "(within 32 px); elsewhere the probability is 0; 0 runs it everywhere"))
    threads: int = Field(0, ge=0, le=256, description="onnxruntime threads; 0 = every core (results do not depend on it)")

    @field_validator("window_px")
    @classmethod
    def _stride(cls, v: int) -> int:
        if v % 16:
            raise ValueError("must be a multiple of 16")
        return v


class ObserveConfig(_Section):
    """Where change can be seen: clouds, cloud shadows, thick haze and saturation on either date.

    Levels are in units of ``before``'s 2nd..98th percentile range of each band (0 dark, 1 bright).
    """

    enabled: bool = Field(True, description="mask clouds, shadows, haze and saturation as not observable (255)")
    cloud_min_brightness: float = Field(0.9, gt=0, description="cloud core: every visible band at least this bright")
    cloud_min_brightening: float = Field(0.4, gt=0, description="cloud core: and brighter than the other date by this")
    cloud_max_rectangularity: float = Field(0.8, gt=0, le=1, description=(
        "a bright region filling this share of its minimum-area rectangle is a roof, not a cloud"))
    rim_min_brightness: float = Field(0.5, gt=0, description="cloud rim (thin edge): every visible band this bright")
    rim_min_brightening: float = Field(0.15, gt=0, description="cloud rim: and brighter than the other date by this")
    cloud_min_area_m2: float = Field(2000.0, ge=0, description="smaller bright regions are roofs, not clouds")
    cloud_min_radius_m: float = Field(20.0, ge=0, description=(
        "a cloud's core holds a disk this wide (radius); roads and roof rows do not"))
    shadow_min_darkening: float = Field(0.05, gt=0, description="shadow: darker than the other date by this (mean level)")
    shadow_max_ratio: float = Field(0.7, gt=0, le=1, description="shadow: mean level at most this share of the other date's")
    shadow_max_level: float = Field(0.25, gt=0, description="shadow: mean level at most this (among the scene's darkest)")
    shadow_min_area_m2: float = Field(2000.0, ge=0, description="dark regions smaller than this are not shadows")
    shadow_max_offset_m: float = Field(3000.0, gt=0, description="farthest a shadow lies from its cloud")
    shadow_min_lift: float = Field(4.0, gt=1, description=(
        "the best cloud-to-shadow displacement must meet dark pixels this many times more often than chance"))
    haze_min_brightening: float = Field(0.15, gt=0, description="thick haze: brighter than the other date by this")
    haze_max_contrast_ratio: float = Field(0.4, gt=0, le=1, description=(
        "thick haze: local contrast at most this share of the other date's"))
    haze_min_area_m2: float = Field(20000.0, ge=0, description="smaller hazy patches are left observable")
    saturation_min_area_m2: float = Field(10000.0, ge=0, description=(
        "blown-out areas (every visible band at the clipping level) at least this large are not observable"))
    buffer_m: float = Field(30.0, ge=0, description="clouds and shadows grow by this much (at most 64 px)")
    cloud_model: Literal["classical", "csmask"] = Field("classical", description=(
        "clouds and cloud shadows: classical (any imagery), or csmask (Sentinel-2 B02 B03 B04 B08 [B11 B12]; "
        "the ukis-csmask CNN of the optional extra changedet[csmask])"))
    csmask_product_level: Literal["l1c", "l2a"] = Field("l1c", description=(
        "csmask: the Sentinel-2 product level of both dates (top-of-atmosphere l1c or surface l2a)"))
    csmask_dn_scale: float = Field(10000.0, gt=0, description=(
        "csmask: reflectance = (DN + csmask_dn_offset) / csmask_dn_scale (10000 for Sentinel-2 L1C/L2A)"))
    csmask_dn_offset: float = Field(0.0, description=(
        "csmask: added to DN before scaling (-1000 for products of processing baseline 04.00 or later)"))
    csmask_gsd_m: float = Field(30.0, gt=0, description=(
        "csmask: the bands are averaged to about this pixel size first (the models do best near 30 m)"))


class ProcessingConfig(_Section):
    """How the work is cut up; does not change results."""

    window_px: int = Field(512, ge=64, le=32768, description="side of a processing window")
    quicklook_max_px: int = Field(1000, ge=128, le=8192, description="long side of each quick-look panel")
    workers: int = Field(0, ge=0, le=1024, description=(
        "threads running windows and regions at once; 0 = every core (results do not depend on it)"))
    memory_budget_mb: float = Field(64, ge=0, description=(
        "a whole-scene array larger than this is kept in a memory-mapped file in the run's staging folder"))


class OutputConfig(_Section):
    """Extra output files; the output contract's files are always written."""

    vector_format: Literal["gpkg", "fgb"] | None = Field(None, description=(
        "also write the detections as detections.gpkg (GeoPackage) or detections.fgb (FlatGeobuf); null: GeoJSON only"))


class LimitsConfig(_Section):
    """How large a pair may be; checked from the files' headers before any long work."""

    max_megapixels: float | None = Field(None, gt=0, description=(
        "largest output grid (the overlap of the pair), megapixels; null: only the memory check"))
    memory_fraction: float = Field(0.8, ge=0, description=(
        "refuse a pair whose estimated peak memory exceeds this share of the memory available; 0 turns the check off"))
    disk_fraction: float = Field(0.9, ge=0, le=1, description=(
        "refuse a pair whose estimated temporary disk exceeds this share of the free space beside --out; 0 turns the check off"))


class SeriesConfig(_Section):
    """A dated series of one site (``changedet series``): presence per date and tracks."""

    min_observable_fraction: float = Field(0.5, ge=0, le=1, description=(
        "a date whose observable share of the site is below this is not observable: empty cells, never absent"))
    footprint_buffer_m: float = Field(2.0, ge=0, le=1000, description=(
        "clouds and shadows grown by this much decide whether an object's footprint and a date are seen (observe.buffer_m guards pixel changes)"))
    min_region_observable: float = Field(0.5, ge=0, le=1, description=(
        "an object's footprint must be at least this share observable on a date for it to count as present or absent"))
    deviation_sigma: float = Field(3.0, gt=0, description=(
        "a pixel stands out from the temporal background when its 3 x 3 smoothed difference exceeds this many times its no-change spread"))
    step_min_sigma: float = Field(3.0, gt=0, description=(
        "a lasting step (a structure built or removed) when a pixel's dates before and after differ by this many no-change spreads"))
    step_min_sharpness: float = Field(4.0, gt=0, description=(
        "... and by this many times the scatter of the dates within each side (a steady drift, the season's, reaches 3.5 at most)"))
    min_area_m2: float = Field(8.0, ge=0, description="smallest region that stands out on one date, square metres (about half the smallest object: a region is often part of it)")
    edge_tolerance_px: float = Field(0.5, ge=0, le=5, description=(
        "misregistration allowed for at edges: the no-change spread grows by this times the background's local slope"))
    state_min_separation: float = Field(1.5, ge=0, description=(
        "an object's present and empty states must differ by this many noise sigmas (the region's contrast to its ring)"))
    state_min_sharpness: float = Field(4.0, gt=0, description=(
        "... and by this many times the scatter of the dates within each state (two states, not one state's scatter)"))
    link_min_overlap: float = Field(0.3, gt=0, le=1, description=(
        "regions of two dates are one object when they share this much of the smaller footprint"))
    link_max_size_ratio: float = Field(10.0, ge=1, description=(
        "... if the larger is at most this many times the smaller (or is a lasting step's region): a haze patch does not swallow a hut"))
    merge_gap_m: float = Field(2.0, ge=0, le=100, description=(
        "pieces present on exactly the same dates and this close are one object (a zig-zag trench, a hull and its stern)"))
    large_cloud_share: float = Field(0.1, gt=0, le=1, description=(
        "a bright white region covering this share of the site is a cloud whatever its shape (no roof is that large)"))
    passing_cloud_radius_m: float = Field(8.0, ge=0, description=(
        "a ragged bright white blob bright on one date only (not on the dates before and after) is a cloud "
        "when its core holds a disk of this radius, smaller than detect's observe.cloud_min_radius_m "
        "(a new road or roof row lasts; a hull or a roof is rectilinear); 0 turns the rule off"))
    memory_mb: int = Field(96, ge=8, le=65536, description=(
        "memory for the windows of all dates read at once; the window side follows from it and the number of dates"))
    timeline_max_tracks: int = Field(60, ge=1, le=1000, description="tracks drawn as bars in timeline.png (longest first)")


class Config(_Section):
    """The whole effective configuration of a run."""

    gsd_m: float | None = Field(None, gt=0, le=MAX_GSD_M, description="ground sample distance override, metres")
    registration: RegisterConfig = RegisterConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    measure: MeasureConfig = MeasureConfig()
    decide: DecideConfig = DecideConfig()
    observe: ObserveConfig = ObserveConfig()
    objects: ObjectsConfig = ObjectsConfig()
    processing: ProcessingConfig = ProcessingConfig()
    output: OutputConfig = OutputConfig()
    limits: LimitsConfig = LimitsConfig()
    model: ModelConfig = ModelConfig()
    series: SeriesConfig = SeriesConfig()

    @model_validator(mode="before")
    @classmethod
    def _model_path(cls, data: Any) -> Any:
        """``model: FILE`` is short for ``model: {path: FILE}`` (batch manifests, config files)."""
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            data = {**data, "model": {"path": data["model"]}}
        return data

    def record(self) -> dict[str, Any]:
        """The configuration as ``summary.json`` records it and a resumed batch compares it.

        ``processing.workers`` is left out: it does not change results, and a run on another
        machine or with another worker count is the same run (it is recorded under ``run``).
        """
        data = self.model_dump(mode="json")
        data["processing"].pop("workers", None)
        return data


def list_presets() -> list[str]:
    """Names of the shipped presets (``configs/*.yaml`` without ``default``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "default")


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values, not a "
                          f"{type(data).__name__}; see configs/default.yaml")
    return data


def _preset_data(name: Any, where: str = "preset") -> dict[str, Any]:
    if name not in list_presets():  # a name, never a path: "../x" must not reach the file system
        raise ConfigError(f"{where} {shown(name)}: unknown preset; choose one of: {', '.join(list_presets())}")
    return _read_yaml(PRESET_DIR / f"{name}.yaml")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(item: str) -> dict[str, Any]:
    """Turn ``"decide.min_area_m2=10"`` into ``{"decide": {"min_area_m2": 10}}``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {shown(item)}: expected key=value, e.g. --set decide.min_area_m2=10")
    try:
        value = load_text(raw)
    except YamlRefused as exc:
        raise ConfigError(f"--set {shown(item)}: the value is refused: {exc.problem}; {exc.fix}") from None
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    cursor = node
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def _describe(err: ValidationError, source: str, sets: list[str] | tuple[str, ...] = ()) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    for item in sets:  # a key a --set gave (or lies under) is the --set's fault, not the file's
        parts = item.partition("=")[0].strip().split(".")
        if loc[:len(parts)] == parts or parts[:len(loc)] == loc:
            source = "--set"
    key = shown(".".join(loc))
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown config key {key}; see configs/default.yaml for the valid keys"
    return f"{source}: config key {key}: {first['msg']} (got {shown(first.get('input'))})"


def build_config(
    data: dict[str, Any] | None = None,
    *,
    preset: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
    source: str = "config",
) -> Config:
    """Resolve a :class:`Config` from a preset, a mapping and ``key=value`` overrides."""
    merged: dict[str, Any] = {}
    data = dict(data or {})
    file_preset = data.pop("preset", None)
    if preset is not None:
        merged = _merge(merged, _preset_data(preset, "--preset"))
    elif file_preset is not None:
        merged = _merge(merged, _preset_data(file_preset, f"{source}: preset"))
    merged = _merge(merged, data)
    for item in sets:
        merged = _merge(merged, parse_set(item))
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_describe(err, source, sets)) from None


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> Config:
    """Load the effective configuration.

    Parameters
    ----------
    path : path to a user YAML file, optional. It may name a base ``preset:``.
    preset : name of a shipped preset (see :func:`list_presets`), optional.
    sets : ``key=value`` overrides with dotted keys, applied last.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    return build_config(data, preset=preset, sets=sets, source=str(path) if path else "--set")
