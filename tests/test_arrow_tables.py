"""Array tables written by pyarrow directly (not by the project's writer) read back exactly, in each layout
``meme.arrow.column_array`` takes, with the shape they carry and at most one copy."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meme.arrow import column_array
from meme.data import PairedData
from meme.data.paired import read_array_table
from meme.errors import MemeError

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (7, 1, 4, 5), dtype=np.uint8)
LABELS = np.arange(7) % 3


def nested_list(x: np.ndarray) -> pa.Array:
    arr = pa.array(x.reshape(-1))
    for size in reversed(x.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


LAYOUTS = {
    "fixed_shape_tensor": lambda x: pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.uint8(), x.shape[1:]), pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x[0].size)),
    "nested_fixed_size_list": nested_list,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_pyarrow_written_image_tables_round_trip_with_their_shape(tmp_path, layout):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": LAYOUTS[layout](IMAGES), "label": pa.array(LABELS)}), path)
    x, y = read_array_table(path)
    assert x.shape == (7, 1, 4, 5) and x.dtype.is_floating_point is False
    assert np.array_equal(x.numpy(), IMAGES) and np.array_equal(y.numpy(), LABELS)
    data = PairedData.from_parquet(path, path, "a", "b")
    assert data.tables[0].shape == (7, 1, 4, 5) and data.labels.tolist() == LABELS.tolist()


def test_flat_lists_binary_and_scalars(tmp_path):
    vec = RNG.standard_normal((6, 3)).astype(np.float32)
    table = pa.table({
        "list": pa.array([list(r) for r in vec], type=pa.list_(pa.float32())),
        "binary": pa.array([r.tobytes() for r in IMAGES[:6].reshape(6, -1)], type=pa.binary(20)),
        "scalar": pa.array(np.arange(6, dtype=np.int16)),
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert np.array_equal(column_array(back, "list"), vec)
    assert np.array_equal(column_array(back, "binary"), IMAGES[:6].reshape(6, 20))       # raw bytes as uint8
    assert column_array(back, "scalar").shape == (6, 1)


def test_rows_spread_over_chunks_are_joined_in_one_copy_and_a_mutable_buffer_is_not_copied():
    x = RNG.standard_normal((10, 4)).astype(np.float32)
    one = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)})
    view = column_array(one, "x")
    assert np.array_equal(view, x) and view.flags.writeable
    two = pa.concat_tables([one.slice(0, 3), one.slice(3)])
    assert two.column("x").num_chunks == 2
    joined = column_array(two, "x")
    assert np.array_equal(joined, x) and joined.flags.writeable
    # a slice of a chunk starts at its offset
    assert np.array_equal(column_array(one.slice(4, 3), "x"), x[4:7])


@pytest.mark.parametrize("column, message", [
    (pa.array([[1.0, 2.0], [3.0]]), "rows have different lengths (2 at row 0, 1 at row 1)"),
    (pa.array(["a", "b"]), "holds string values; it must be numeric"),
    (pa.array([[1.0, None], [3.0, 4.0]], type=pa.list_(pa.float64(), 2)), "has 1 missing values"),
])
def test_bad_columns_are_named(column, message):
    with pytest.raises(MemeError) as e:
        column_array(pa.table({"x": column}), "x", "t.parquet: column 'x'")
    assert message in str(e.value) and str(e.value).startswith("t.parquet: column 'x'")


def test_metadata_shape_that_does_not_fit_the_values(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.table({"x": nested_list(IMAGES)}).replace_schema_metadata({b"meme.shape": b"[3, 3]"})
    pq.write_table(table, path)
    with pytest.raises(MemeError, match=r"metadata says rows of shape \(3, 3\), but column 'x' holds 20 values a row"):
        read_array_table(path)
