"""Files a cluster shares are data, never code: checkpoints and Parquet tables that arrive from shared
storage are loaded without unpickling arbitrary objects, and the code that loads them says so."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from meme.errors import MemeError

ROOT = Path(__file__).resolve().parents[1]


class SideEffect:
    """Unpickling this object creates a file: proof that a loader ran code from the file it read."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_an_object_is_refused_without_running_it(tmp_path):
    from meme.train import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {}, "epoch": 1, "payload": SideEffect(marker)}, path)
    with pytest.raises(MemeError, match=r"checkpoint\.pt is corrupt or not a MEME checkpoint"):
        load_checkpoint(path)   # the loader a restarted trial uses on its Tune checkpoint
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # what made it refuse: weights_only=True
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_a_parquet_column_claiming_a_pickled_type_is_read_as_plain_bytes(tmp_path):
    from meme.data.paired import read_array_table

    marker = tmp_path / "ran"
    payload = pickle.dumps(SideEffect(marker))
    # the metadata of pyarrow's former pickle-based extension type: a reader that honoured it would unpickle
    field = pa.field("x", pa.list_(pa.uint8(), 4), metadata={b"ARROW:extension:name": b"arrow.py_extension_type",
                                                             b"ARROW:extension:metadata": payload})
    values = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.uint8)), 4)
    pq.write_table(pa.Table.from_arrays([values], schema=pa.schema([field])), tmp_path / "t.parquet")
    x, labels = read_array_table(tmp_path / "t.parquet", label_column=None)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and labels is None
    assert not marker.exists()


def test_the_project_never_unpickles_what_it_reads():
    """Every torch.load passes weights_only=True, np.load never allows pickles, no pickle/marshal loads."""
    offenders = []
    for path in sorted([*ROOT.glob("meme/**/*.py"), *ROOT.glob("orchestration/**/*.py")]):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(ROOT)}: {call}")
        for call in re.findall(r"np\.load\([^)]*\)", text):
            if "allow_pickle=False" not in call:
                offenders.append(f"{path.relative_to(ROOT)}: {call}")
        for bad in re.findall(r"\b(?:pickle|cloudpickle|marshal|dill)\.loads?\(|read_pickle\(|yaml\.unsafe_load|"
                              r"yaml\.load\([^)]*Loader=yaml\.(?:Full|Unsafe)?Loader", text):
            offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert not offenders, offenders
