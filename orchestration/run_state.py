"""Where a study's run lives and what it leaves to resume from: ``--storage`` (a folder, or s3:// and other
URIs every node reaches) and the run-state file ``meme_study.json`` beside Ray Tune's state."""
from __future__ import annotations

import json
from pathlib import Path

from meme.errors import MemeError
from meme.paths import check_dir_target


STATE_FILE = "meme_study.json"


def default_storage() -> str:
    return str(Path.cwd() / "runs" / "studies")


def is_uri(path: str) -> bool:
    """s3://, gs://, ... (every node reaches them); a file:// URI is a local path."""
    from urllib.parse import urlparse

    scheme = urlparse(path).scheme
    return len(scheme) > 1 and scheme != "file"


def resolve_storage(storage: str | None) -> str:
    s = storage or default_storage()
    if is_uri(s):
        return s.rstrip("/")
    return str(check_dir_target(Path(s.removeprefix("file://")).expanduser(), "--storage").resolve())


def _fs(storage: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(storage)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad URIs and missing credentials
        raise MemeError(f"cannot open --storage {storage}: {e}") from None


def write_state(storage: str, name: str, state: dict) -> None:
    fs, base = _fs(storage)
    fs.create_dir(f"{base}/{name}", recursive=True)
    with fs.open_output_stream(f"{base}/{name}/{STATE_FILE}") as f:
        f.write((json.dumps(state, indent=2) + "\n").encode())


def read_state(storage: str, name: str) -> dict | None:
    import pyarrow.fs

    fs, base = _fs(storage)
    path = f"{base}/{name}/{STATE_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.readall().decode())


def find_resumable(storage: str, study: str | None, name: str | None) -> tuple[str, dict]:
    """The run to resume: ``name`` if given, else the latest run of ``study`` under ``storage``."""
    import pyarrow.fs

    if name:
        state = read_state(storage, name)
        if state is None:
            raise MemeError(f"no study run {name!r} under --storage {storage} (no {STATE_FILE} there)")
        return name, state
    if not study:
        raise MemeError("--resume needs --study NAME (or --resume RUN_NAME)")
    fs, base = _fs(storage)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    except OSError as e:
        raise MemeError(f"cannot list --storage {storage}: {e}") from None
    runs = sorted(i.base_name for i in infos
                  if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(f"{study}-"))
    for run in reversed(runs):
        state = read_state(storage, run)
        if state is not None and state.get("study") == study:
            return run, state
    raise MemeError(f"no run of study {study!r} to resume under --storage {storage}; start one without --resume")
