"""Progress bars that suit where the output goes.

On a terminal every bar is drawn by tqdm. Off a terminal (a log file, a study's worker, CI) a bar that moves
once per batch or item would write a line per update, thousands per epoch; such fine-grained bars are not
drawn there, so a log holds a line per stage and per epoch at most (the epoch lines come from the callers).
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(iterable=None, *, progress: bool = True, fine: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, not drawn where ``progress`` is off, nor, for a ``fine`` bar (one update per
    batch or item), where standard error is not a terminal."""
    disable = not progress or (fine and not _is_terminal())
    return tqdm(iterable, disable=disable, **kwargs)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed streams
        return False
