"""The labelled real pairs of ``../shared/`` (and synth scenes) as training pairs.

Used by ``benchmarks/accuracy.py`` (held-out folds) and ``make model`` (the default model), so
both see the same pairs read the same way. Nothing here is copied into the repository.

    python benchmarks/realpairs.py --manifest build/model_manifest.yaml [--synth-dir build/synth]

writes a training manifest of every pair the default model is trained on.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import yaml

from changedet import synth
from changedet.learned.training import LabelledPair

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALDATA = SHARED / "realdata"
TRAINDATA = SHARED / "traindata"
#: plain A/B/label folders of ../shared/realdata (dev pairs)
PLAIN_DEV = ("levir-cd", "levir-cd-1024", "dsifn", "whu-cd", "sztaki-airchange")
OSCD_BANDS = ("B02", "B03", "B04", "B08")
#: sites of the LEVIR-CD tiles: a 256 crop and the 1024 tile never share one
LEVIR_GROUP = {"train_36_0512_0512": "levir-train_36", "train_386_0512_0768": "levir-train_386",
               "train_412_0512_0768": "levir-train_412", "val_27_0000_0256": "levir-val_27",
               "test_12": "levir-test_12"}


def _plain(folder: Path, dataset: str) -> list[LabelledPair]:
    out = []
    for lab in sorted(glob.glob(str(folder / "label" / "*"))):
        stem = Path(lab).stem
        a = sorted(glob.glob(str(folder / "A" / f"{stem}.*")))
        b = sorted(glob.glob(str(folder / "B" / f"{stem}.*")))
        if a and b:
            group = LEVIR_GROUP.get(stem, f"{dataset}-{stem}") if dataset.startswith("levir") else f"{dataset}-{stem}"
            out.append(LabelledPair((a[0],), (b[0],), lab, group, dataset=dataset))
    return out


def _oscd(folder: Path, dataset: str) -> list[LabelledPair]:
    out = []
    for city in sorted(p for p in folder.iterdir() if p.is_dir()):
        def bands(d: str) -> tuple[str, ...]:
            return tuple(sorted(glob.glob(str(city / d / f"*_{b}.tif")))[0] for b in OSCD_BANDS)
        try:
            before, after = bands("imgs_1"), bands("imgs_2")
        except IndexError:
            continue
        out.append(LabelledPair(before, after, str(city / "cm" / f"{city.name}-cm.tif"), f"oscd-{city.name}",
                                change_values=(2,), dataset=dataset))
    return out


def dev_pairs(dataset: str) -> list[LabelledPair]:
    """Pairs of one dataset of ``../shared/realdata`` (empty when absent)."""
    folder = REALDATA / dataset
    if not folder.is_dir():
        return []
    return _oscd(folder, "oscd") if dataset == "oscd" else _plain(folder, dataset)


def train_pairs(split: str = "train") -> list[LabelledPair]:
    """Pairs of ``../shared/traindata``: ``train`` (SZTAKI, OSCD, MS-HS-BCD train + val) or ``test``."""
    if not TRAINDATA.is_dir():
        return []
    if split == "test":
        return _plain(TRAINDATA / "ms-hs-bcd" / "test", "ms-hs-bcd-test")
    pairs = _plain(TRAINDATA / "sztaki-airchange", "sztaki-train") + _oscd(TRAINDATA / "oscd", "oscd-train")
    for sub in ("train", "val"):
        pairs += _plain(TRAINDATA / "ms-hs-bcd" / sub, "ms-hs-bcd")
    return pairs


def synth_pairs(folder: Path, n: int = 96, size: int = 384, first_seed: int = 70000) -> list[LabelledPair]:
    """Synth scenes of every scenario and difficulty, unshifted, written to ``folder``."""
    out = []
    scen = synth.SCENARIOS
    diffs = synth.DIFFICULTIES
    for i in range(n):
        seed = first_seed + i
        s, d = scen[i % len(scen)], diffs[(i // len(scen)) % len(diffs)]
        site = folder / f"{s}-{d}-{seed}"
        if not (site / "truth_class.tif").exists():
            synth.write_scene(synth.make_scene(s, seed, size, d, shift_px=(0.0, 0.0)), site)
        out.append(LabelledPair((str(site / "before.tif"),), (str(site / "after.tif"),),
                                str(site / "truth_class.tif"), f"synth-{seed}", dataset="synth"))
    return out


#: how much each dataset weighs in the default model, spread over its pairs
DATASET_WEIGHT = {"levir-cd": 1.0, "levir-cd-1024": 1.0, "dsifn": 2.0, "whu-cd": 2.0, "sztaki-airchange": 1.0,
                  "sztaki-train": 2.0, "oscd": 1.0, "oscd-train": 1.0, "ms-hs-bcd": 3.0, "synth": 8.0}


def weighted(pairs: list[LabelledPair]) -> list[LabelledPair]:
    """Each dataset's pairs share its :data:`DATASET_WEIGHT`, so 210 small pairs do not drown 4 large ones."""
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.dataset] = counts.get(p.dataset, 0) + 1
    return [LabelledPair(p.before, p.after, p.label, p.group, DATASET_WEIGHT.get(p.dataset, 1.0)
                         * 10.0 / counts[p.dataset], p.change_values, p.dataset) for p in pairs]


def default_pairs(synth_dir: Path) -> list[LabelledPair]:
    """Every pair the default model is trained on: dev pairs, training pairs and synth scenes."""
    pairs = [p for d in PLAIN_DEV + ("oscd",) for p in dev_pairs(d)] + train_pairs("train")
    return weighted(pairs + synth_pairs(synth_dir))


def manifest(pairs: list[LabelledPair]) -> dict[str, object]:
    """A training manifest (``changedet train``) listing ``pairs``."""
    items = []
    for p in pairs:
        item: dict[str, object] = {"before": list(p.before) if len(p.before) > 1 else p.before[0],
                                   "after": list(p.after) if len(p.after) > 1 else p.after[0],
                                   "label": p.label, "group": p.group, "dataset": p.dataset,
                                   "weight": round(p.weight, 6)}
        if p.change_values:
            item["change_values"] = list(p.change_values)
        items.append(item)
    return {"pairs": items}


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the training manifest of the default model.")
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--synth-dir", type=Path, default=ROOT / "build" / "synth")
    args = ap.parse_args()
    if not REALDATA.is_dir() or not TRAINDATA.is_dir():
        raise SystemExit(f"{SHARED}: the shared real data is not here; the default model cannot be rebuilt")
    pairs = default_pairs(args.synth_dir.resolve())
    args.manifest.parent.mkdir(parents=True, exist_ok=True)
    args.manifest.write_text(yaml.safe_dump(manifest(pairs), sort_keys=False), encoding="utf-8")
    print(f"{args.manifest}: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
