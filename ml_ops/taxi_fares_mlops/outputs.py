"""Output folders a command replaces: only its own, and atomically.

A command that writes a folder (the wheels' ``dist``, a serving bundle) builds the new one beside it and swaps it in
last, so a reader sees the old folder or the new one, never half of either. It replaces a folder that already exists
only when that folder is empty or is one of its own outputs (``recognise`` says which): a folder holding anything
else is refused with ``ForeignOutputError``, and nothing is deleted. A 3 a.m. ``--out ~`` costs a message, not a
home directory.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from taxi_fares_mlops.errors import MlopsError

# Written into an output folder whose format leaves room for it (not a signed bundle: every file there is listed).
MARKER = ".written-by-mlops"
SHOWN = 5


class ForeignOutputError(MlopsError):
    """An output folder holds something the command did not write: it is left untouched."""


def check_replaceable(folder: Path, recognise: Callable[[Path], bool], what: str) -> None:
    """Raise ``ForeignOutputError`` unless ``folder`` is absent, empty, marked as ours, or ``recognise``d."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ForeignOutputError(f"refusing to write {what} to {folder}: it is not a folder this command made "
                                 f"(a {'symbolic link' if folder.is_symlink() else 'file'}); choose a new folder")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries or (folder / MARKER).is_file() or recognise(folder):
        return
    shown = ", ".join(entries[:SHOWN]) + (f" and {len(entries) - SHOWN} more" if len(entries) > SHOWN else "")
    raise ForeignOutputError(f"refusing to replace {folder} with {what}: it holds files this command did not write "
                             f"({shown}); nothing was deleted: choose an empty or new folder")


def building_folder(destination: Path) -> Path:
    """A fresh sibling folder to build ``destination``'s replacement in."""
    destination = Path(destination).resolve()
    building = destination.with_name(f".{destination.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)  # this process's own leftover, by its name
    building.mkdir(parents=True)
    return building


def swap_in(building: Path, destination: Path) -> None:
    """Put ``building`` where ``destination`` is, the old folder (checked by the caller) removed only after."""
    destination = Path(destination).resolve()
    if not destination.exists():
        building.rename(destination)
        return
    old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    destination.rename(old)
    try:
        building.rename(destination)
    except OSError:
        old.rename(destination)  # the previous folder stays where its readers look
        raise
    shutil.rmtree(old, ignore_errors=True)
