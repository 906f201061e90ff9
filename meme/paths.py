"""Checks on the paths a user names, made before any long work starts."""
from __future__ import annotations

import os
from pathlib import Path

from meme.errors import MemeError


def check_dir_target(path, flag: str) -> Path:
    """``path`` can be (or become) a directory: it is one, or its first existing ancestor is a writable
    directory. A ``MemeError`` naming ``flag`` otherwise; nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MemeError(f"{flag} {p} is a file; give a directory (it is created if missing)")
    anc = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), Path("/"))
    if not anc.is_dir():
        raise MemeError(f"{flag} {p}: {anc} is a file, so no directory can be made there; give a directory path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise MemeError(f"{flag} {p}: {anc} is not writable; give a directory you can write to")
    return p


def check_existing_dir(path, flag: str) -> Path:
    """``path`` exists and is a directory."""
    p = Path(path)
    if not p.exists():
        raise MemeError(f"{flag} {p} does not exist")
    if not p.is_dir():
        raise MemeError(f"{flag} {p} is a file; give a directory")
    return p
