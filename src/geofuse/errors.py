"""Actionable error classes for bad user input.

Every error raised on user input subclasses :class:`GeofuseError` (and a fitting built-in), and
its message names the thing that is wrong, the value, and the fix. The CLI prints the message on
one line and exits with code 2.
"""

from __future__ import annotations

import errno
from pathlib import Path


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


class LockedError(GeofuseError, RuntimeError):
    """Another live process is writing the same study or run directory."""


class StopRequested(KeyboardInterrupt):
    """Ctrl+C or SIGTERM asked the command to stop; it stops cleanly and says how to go on.

    Attributes:
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
        resume: the command that continues the interrupted work, when the layer that stopped
            knows it better than "the same command again".
        detail: what was finished and what was not, for the message.
    """

    def __init__(self, signum: int = 2, resume: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(signum)
        self.signum, self.resume, self.detail = signum, resume, detail

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for Ctrl+C, 143 for SIGTERM."""
        return 128 + self.signum


class DiskFullError(GeofuseError, OSError):
    """The disk (or quota, or file-size limit) filled up while writing an output."""


class WriteAccessError(GeofuseError, PermissionError):
    """An output cannot be written: read-only file system or no permission."""


class ExternalLibraryError(GeofuseError, RuntimeError):
    """GDAL (rasterio) or HDF5 (h5py) failed on a file; the message names the file and reason."""


class InterruptedByUserError(GeofuseError):
    """Ctrl+C or SIGTERM stopped the command; outputs already written are intact.

    Exits 128 + the signal number: 130 for Ctrl+C, 143 for SIGTERM.
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _interrupted(err: KeyboardInterrupt) -> InterruptedByUserError:
    """The one-line message for Ctrl+C or a :class:`StopRequested` (which may name a resume)."""
    signum = int(getattr(err, "signum", 2))
    what = {2: "interrupted (Ctrl+C)", 15: "stopped (SIGTERM)"}.get(signum,
                                                                   f"stopped by signal {signum}")
    resume = getattr(err, "resume", None) or _same_command()
    detail = getattr(err, "detail", None)
    return InterruptedByUserError(
        f"{what}; {detail + '; ' if detail else ''}outputs written before are intact and "
        f"no half-written file is left; to continue, run: {resume}",
        exit_code=128 + signum,
    )


def _same_command() -> str:
    """This command line again (``geofuse ...``): commands that keep finished work go on."""
    import shlex
    import sys

    return "geofuse " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "the same command again"


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM}
_DISK_FULL_TEXT = ("no space left", "disk quota exceeded", "file too large",
                   "free disk space", "errno = 28", "errno = 27", "errno = 122")
_NO_WRITE_TEXT = ("read-only file system", "permission denied", "errno = 30", "errno = 13")


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def write_error(err: BaseException, path: str | Path | None = None) -> GeofuseError | None:
    """A :class:`DiskFullError` or :class:`WriteAccessError` for ``err``, else None.

    Args:
        err: an exception raised while writing (``OSError`` or a GDAL/HDF5 error whose message
            carries the OS reason).
        path: the output being written; default: the exception's ``filename``.
    """
    if isinstance(err, GeofuseError):
        return err if isinstance(err, DiskFullError | WriteAccessError) else None
    code = err.errno if isinstance(err, OSError) else None  # GDAL errors have their own errno
    text = str(err).lower()
    target = path if path is not None else getattr(err, "filename", None)
    where = f" {str(target)!r}" if target is not None else ""
    if code in _DISK_FULL or any(t in text for t in _DISK_FULL_TEXT):
        return DiskFullError(
            f"disk full writing{where} ({_reason(err)}); free space on that disk or set "
            "workdir in the config to a folder on another disk, then re-run (files written "
            "before are intact)"
        )
    if code == errno.ENOTDIR or (isinstance(err, FileExistsError) and path is not None):
        return WriteAccessError(
            f"cannot write{where}: a folder on its path is an existing file ({_reason(err)}); "
            "set workdir or the output in the config to a folder path, or move that file"
        )
    if code in _NO_WRITE or any(t in text for t in _NO_WRITE_TEXT):
        return WriteAccessError(
            f"cannot write{where}: read-only file system or permission denied "
            f"({_reason(err)}); set workdir in the config to a writable folder or fix the "
            "folder's permissions"
        )
    return None


def friendly_error(err: BaseException) -> GeofuseError | None:
    """Translate an exception that is not a bug in geofuse into a one-line GeofuseError.

    Covers Ctrl+C, disk full, read-only outputs, other ``OSError`` with a file name, and
    GDAL (rasterio) and HDF5 (h5py) errors. Returns None for anything else (a bug).
    """
    err = child_error(err)
    if isinstance(err, GeofuseError):
        return err
    if isinstance(err, KeyboardInterrupt):
        return _interrupted(err)
    mapped = write_error(err)
    if mapped is not None:
        return mapped
    module = type(err).__module__ or ""
    if module.startswith(("rasterio", "h5py")):
        library = "GDAL (rasterio)" if module.startswith("rasterio") else "HDF5 (h5py)"
        return ExternalLibraryError(
            f"{library} error: {_reason(err)}; check that the file named is complete and "
            "readable (re-create it with the geofuse step that writes it, or re-download it)"
        )
    if isinstance(err, OSError):  # the environment, not a bug: name what is known
        where = f" {str(err.filename)!r}" if err.filename is not None else ""
        return ExternalLibraryError(
            f"I/O error on{where or ' a file'} ({err.strerror or _reason(err)}); check the path, "
            "the disk and the permissions, then re-run"
        )
    return None


def child_error(err: BaseException) -> BaseException:
    """The error a training process raised, for one that reached the command wrapped.

    torch's ``ProcessRaisedException`` (a data-parallel training process failed) carries only
    the child's traceback text; its last line is ``module.Class: message``. A geofuse error is
    rebuilt from it (so the command prints it on one line and exits 2), any other error becomes
    a RuntimeError with that line. Other exceptions are returned unchanged.
    """
    if type(err).__name__ != "ProcessRaisedException":
        return err
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else str(err)
    name, _, message = last.partition(": ")
    module, _, cls_name = name.rpartition(".")
    cls = globals().get(cls_name) if module == __name__ else None
    if isinstance(cls, type) and issubclass(cls, GeofuseError):
        try:
            return cls(message)
        except TypeError:  # a constructor with other arguments
            pass
    return RuntimeError(f"a training process failed: {last}")


class WorkerDiedError(GeofuseError, RuntimeError):
    """A worker process of a study died (killed from outside, out of memory)."""


def write_failure(err: BaseException, path: str | Path) -> GeofuseError:
    """A one-line error for a failed write of ``path`` (GDAL/HDF5 errors hide the OS reason).

    The exception chain is searched for a disk-full or no-permission reason first; GDAL's
    "Write failed" carries none, so the message then names the likely causes and the fix.
    """
    chain: BaseException | None = err
    root = err
    while chain is not None:
        mapped = write_error(chain, path)
        if mapped is not None:
            return mapped
        root, chain = chain, chain.__cause__ or chain.__context__
    return ExternalLibraryError(
        f"writing {str(path)!r} failed ({_reason(root)}); the disk is probably full or the "
        "folder not writable: free space or set workdir in the config to another disk or a "
        "writable folder, then re-run (files written before are intact)"
    )
