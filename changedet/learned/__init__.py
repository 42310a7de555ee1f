"""The learned change stage: a frozen ImageNet encoder on both dates and a head trained on labelled pairs.

- :mod:`.features`: the encoder (ONNX, onnxruntime) and the Siamese features it gives the head;
- :mod:`.head`: the head, its training and its model file (``.npz``, no pickle);
- :mod:`.score`: the probability of relevant change for arrays (windows or whole images);
- :mod:`.bands`: the same for a scene's windows, the encoder's stride-4 part made once per pixel;
- :mod:`.training`: ``changedet train`` (manifests, sampling, the model card);
- :mod:`.lite0`: the encoder's definition and its one-time export (needs torch; never at run time);
- :mod:`.encoder_parts`: the exported encoder cut at its stride-4 tap (needs onnx; never at run time).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .head import Head, load

#: the default model trained by the project (see its card beside it and the README)
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default.npz"


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Head:
    return load(path)


def load_model(path: str | Path | None) -> Head:
    """The model at ``path`` (the shipped default when empty), cached by path and modification time."""
    p = Path(path) if path else DEFAULT_MODEL
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        return load(p)  # raises the InputError naming the file
    return _load_cached(str(p), mtime)


__all__ = ["DEFAULT_MODEL", "Head", "load_model"]
