"""Atomic file writing: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geofuse.errors import write_error


def _temp_name(target: Path, suffix: str) -> Path:
    """A fresh hidden name beside ``target`` (nothing is created)."""
    return target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched, so a
    failed or interrupted command never leaves a half-written output behind. A full disk or a
    read-only folder raises :class:`~geofuse.errors.DiskFullError` or
    :class:`~geofuse.errors.WriteAccessError` naming ``target``.

    The name is chosen before the file is created inside the ``try``, so a Ctrl+C at any
    moment, even right after the file appears, leaves nothing behind.
    """
    target = Path(target)
    tmp_path = _temp_name(target, suffix or target.suffix or ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        yield tmp_path
        if tmp_path.is_file():  # created 0600; give the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            tmp_path.chmod(0o666 & ~umask)
        os.replace(tmp_path, target)
    except OSError as err:
        raise _write_error(err, target) from None
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def scratch_dir(target: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside ``target``, removed on exit whatever happens (a
    Ctrl+C right after it appears included: its name is chosen before it is created)."""
    target = Path(target)
    path = _temp_name(target, "")
    try:
        try:
            path.mkdir(parents=False)
        except OSError as err:
            raise _write_error(err, target) from None
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_together(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Staged paths (one scratch folder beside the targets) for files that must appear
    together: on a clean exit they replace ``targets`` in order (put the record that says
    all is there last); on an error none of them is touched."""
    ordered = list(targets.values())
    with scratch_dir(ordered[-1]) as tmp:
        staged = {key: tmp / path.name for key, path in targets.items()}
        yield staged
        for key, path in targets.items():
            os.replace(staged[key], path)


def _write_error(err: OSError, target: Path) -> OSError:
    """``err`` as a one-line DiskFullError/WriteAccessError naming ``target`` when it is one."""
    mapped = write_error(err, target)
    return err if mapped is None else mapped  # type: ignore[return-value]


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    atomic_write_text(target, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
