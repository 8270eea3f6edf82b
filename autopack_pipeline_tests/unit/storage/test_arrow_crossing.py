"""Arrow <-> numpy in the columnar readers without pyarrow's pandas path (``encoding.arrow_of``,
``numpy_of``, ``filled``): the same values as ``pa.array`` and ``to_numpy`` give, and pandas left unloaded."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from autopack_pipeline.storage.columnar.encoding import arrow_of, filled, numpy_of


@pytest.mark.parametrize("values", [np.arange(-5, 6, dtype=np.int32), np.arange(10, dtype=np.int64)[::3],
                                    np.array([True, False, True, True, False, False, True, False, True]),
                                    np.zeros(0, dtype=np.int64), np.array([1.5, -2.0])])
def test_arrow_of_and_numpy_of_give_back_the_values(values):
    array = arrow_of(values)
    assert array.equals(pa.array(values)) and array.null_count == 0
    back = numpy_of(array)
    assert back.dtype == values.dtype and np.array_equal(back, values)
    assert np.array_equal(numpy_of(pa.chunked_array([array[:2], array[2:]], type=array.type)), values)


@pytest.mark.parametrize("type_", [pa.int32(), pa.int64(), pa.bool_(), pa.int8()])
def test_numpy_of_a_slice_and_filled_nulls(type_):
    raw = [1, None, 0, 1, None, 1, 0, 0, 1, 1] if type_ != pa.bool_() else \
        [True, None, False, True, None, True, False, False, True, True]
    array = pa.array(raw, type=type_)
    fill = False if type_ == pa.bool_() else -1
    expected = [fill if v is None else v for v in raw]
    assert filled(array, fill).to_pylist() == expected
    assert numpy_of(filled(array, fill)[3:]).tolist() == expected[3:]  # an offset into the buffers
    whole = pa.array(expected, type=type_)
    assert filled(whole, fill) is whole  # nothing to fill: the array itself


def test_none_of_them_loads_pandas():
    probe = ("import sys, numpy as np, pyarrow as pa\n"
             "from autopack_pipeline.storage.columnar.encoding import arrow_of, filled, numpy_of\n"
             "a = filled(pa.chunked_array([pa.nulls(3, pa.int32())]).combine_chunks(), -1)\n"
             "mask = arrow_of(np.array([True, False, True]))\n"
             "numpy_of(a.filter(mask)); numpy_of(mask); pa.table({'x': a}).take(arrow_of(np.array([2, 0])))\n"
             "print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "False"
