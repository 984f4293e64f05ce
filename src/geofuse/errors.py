"""Actionable error classes for bad user input.

Every error raised on user input subclasses :class:`GeofuseError` (and a fitting built-in), and
its message names the thing that is wrong, the value, and the fix. The CLI prints the message on
one line and exits with code 2.
"""

from __future__ import annotations


class GeofuseError(Exception):
    """Base class for errors caused by user input or data; the CLI exits 2 on these."""

    exit_code = 2

    def one_line(self) -> str:
        """Return the message collapsed onto a single line."""
        return " ".join(str(self).split())


class ConfigError(GeofuseError, ValueError):
    """A config file is missing a key, has an unknown key, or holds an invalid value."""


class DataNotFoundError(GeofuseError, FileNotFoundError):
    """An input file or directory does not exist or cannot be read."""


class RasterError(GeofuseError, ValueError):
    """A raster is unusable: no CRS, wrong band count, unreadable."""


class AlignmentError(GeofuseError, ValueError):
    """Rasters cannot be aligned onto the reference grid (no overlap, mismatched grids)."""


class LabelError(GeofuseError, ValueError):
    """Label polygons or label rasters are unusable (missing class attribute, unknown class)."""


class SamplingError(GeofuseError, ValueError):
    """Patch sampling produced no usable patches."""


class SplitError(GeofuseError, ValueError):
    """A leakage-free stratified split is impossible (a class lacks groups for every split)."""


class BandError(GeofuseError, KeyError):
    """An unknown band or modality name was requested."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class RunDirError(GeofuseError, FileNotFoundError):
    """A run directory is missing files that a command needs."""
