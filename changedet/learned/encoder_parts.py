"""The encoder cut in two at its stride-4 tap, one-time, from the shipped ONNX file (needs ``onnx``,
in the ``export`` extra).

Both parts are sub-graphs of ``lite0_s16.onnx`` (the same nodes and weights, nothing re-exported):

- ``lite0_s4.onnx``: the image to the stride-4 tap ``f4`` (stem and blocks 0..2, full resolution,
  a receptive-field radius of 9 px);
- ``lite0_s4_s16.onnx``: ``f4`` to the taps ``f8`` and ``f16`` (blocks 3..10).

The first part is over half the encoder's time but reaches only 9 px, so a windowed run can make
``f4`` once per pixel and share it between windows (:mod:`changedet.learned.bands`). Run time never
imports this module.

    python -m changedet.learned.encoder_parts
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"
#: (file, inputs, outputs) of each part
PARTS = (("lite0_s4.onnx", ["image"], ["f4"]), ("lite0_s4_s16.onnx", ["f4"], ["f8", "f16"]))


def split(source: Path, out_dir: Path) -> dict[str, str]:
    """Write both parts of ``source`` into ``out_dir``; returns each file's SHA-256."""
    import onnx.utils

    digests = {}
    for name, inputs, outputs in PARTS:
        out = out_dir / name
        tmp = out.with_suffix(".tmp.onnx")
        onnx.utils.extract_model(str(source), str(tmp), inputs, outputs)
        tmp.replace(out)
        digests[name] = hashlib.sha256(out.read_bytes()).hexdigest()
    return digests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=MODELS / "lite0_s16.onnx")
    ap.add_argument("--out-dir", type=Path, default=MODELS)
    args = ap.parse_args()
    for name, digest in split(args.source, args.out_dir).items():
        print(f"{args.out_dir / name}: sha256 {digest}")


if __name__ == "__main__":
    main()
