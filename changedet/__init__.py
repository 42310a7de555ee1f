"""changedet: find what is new between two satellite images of the same site."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .errors import ChangedetError  # noqa: E402


def detect_pair(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Run detection on one site; see :func:`changedet.pipeline.detect_pair`."""
    from .pipeline import detect_pair as _detect_pair

    return _detect_pair(*args, **kwargs)


__all__ = ["Config", "ChangedetError", "__version__", "detect_pair", "load_config"]
