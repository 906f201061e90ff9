"""Checks on the paths a user names, made before any long work starts."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from meme.errors import MemeError


#: what a ``dataset`` value ends with when it names a dataset file (``meme.data.dataset_file``) rather than a built-in
FILE_SUFFIXES = (".yaml", ".yml", ".json")


def is_dataset_file(name: str) -> bool:
    """True when a ``dataset`` value names a dataset file rather than a built-in dataset."""
    return str(name).lower().endswith(FILE_SUFFIXES)


def resolved(path, what: str) -> Path:
    """``path`` made absolute with its links followed, or a one-line ``MemeError`` naming ``what`` (a link loop)."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as e:   # Python < 3.13 raises RuntimeError for a symlink loop
        raise MemeError(f"{what} {path}: its links do not lead to a file ({' '.join(str(e).split())})") from None


def check_dir_target(path, flag: str) -> Path:
    """``path`` can be (or become) a directory: it is one, or its first existing ancestor is a writable
    directory (probed by making and removing an empty folder there: /proc and /sys look writable to root
    but take no folders). A ``MemeError`` naming ``flag`` otherwise; nothing is left behind."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MemeError(f"{flag} {p} is a file; give a directory (it is created if missing)")
    anc = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), Path("/"))
    if not anc.is_dir():
        raise MemeError(f"{flag} {p}: {anc} is a file, so no directory can be made there; give a directory path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise MemeError(f"{flag} {p}: {anc} is not writable; give a directory you can write to")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".meme-probe-", dir=anc))
    except OSError as e:
        raise MemeError(f"{flag} {p}: {anc} takes no new folders ({e.strerror}); give a directory you can write to") from None
    return p


def check_existing_dir(path, flag: str) -> Path:
    """``path`` exists and is a directory."""
    p = Path(path)
    if not p.exists():
        raise MemeError(f"{flag} {p} does not exist")
    if not p.is_dir():
        raise MemeError(f"{flag} {p} is a file; give a directory")
    return p
