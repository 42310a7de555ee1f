"""Exceptions and warnings raised by changedet.

Every error a user can cause derives from :class:`ChangedetError`; the CLI maps
those to exit code 2 and one line. Anything else is a bug (exit code 1).
"""

from __future__ import annotations


class ChangedetError(Exception):
    """Base class of the errors a user can cause (bad input, bad config, ...)."""


class InputError(ChangedetError):
    """An input raster cannot be opened or used."""


class NoOverlapError(InputError):
    """The before and after images do not overlap."""


class ConfigError(ChangedetError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""


class OutputError(ChangedetError):
    """The output location cannot be written."""


class OutputWriteError(OutputError):
    """The output location stopped taking files: the disk is full, read-only or not permitted.

    Not a fault of one site: :func:`changedet.batch.run_batch` stops on it instead of going on.
    """


class RegistrationError(ChangedetError):
    """Registration failed and the user asked for it to be required."""


class ChangedetWarning(UserWarning):
    """A soft problem; recorded in ``summary.json`` ``warnings``."""


def shown(value: object, limit: int = 60) -> str:
    """A bounded ``repr`` of a user's value for an error message: at most ``limit`` characters.

    Values come from files and options the user controls and may be huge (or, through YAML
    aliases, share structure that would expand exponentially): :mod:`reprlib` bounds the work
    of building the repr, and the result is cut with "…".
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 2, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 4
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
