"""Reading MRC volumes: the fast path for plain files gives what mrcfile gives, and
everything unusual goes to mrcfile (or to a one-line error naming the file)."""
import numpy as np
import mrcfile
import pytest

from deepcluster.core import DeepClusterError
from deepcluster.core.inference.volumes import read_mrc_header, read_volume


def _write(path, data, voxel_size=13.68, extended=0):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel_size
        if extended:
            m.set_extended_header(np.arange(extended, dtype=np.uint8))
    return str(path)


@pytest.mark.parametrize('dtype', [np.int8, np.int16, np.float32, np.uint16, np.float16])
@pytest.mark.parametrize('order', ['<', '>'])
def test_plain_files_read_as_mrcfile_reads_them(tmp_path, dtype, order):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(6, 7, 9)) * 20 + (40 if dtype is np.uint16 else 0)).astype(dtype)
    path = _write(tmp_path / 'v.mrc', data.astype(np.dtype(dtype).newbyteorder(order)), extended=96)
    layout = read_mrc_header(path)
    assert layout is not None and layout[0] == (6, 7, 9) and layout[2] == 1024 + 96   # the fast path
    assert layout[1].itemsize == 1 or layout[1].byteorder == order      # as written (machine stamp)
    vol, vx = read_volume(path)
    with mrcfile.open(path) as m:
        want, want_vx = np.asarray(m.data, np.float32), float(m.voxel_size.x)
    assert vol.dtype == np.float32 and vol.flags.writeable
    np.testing.assert_array_equal(vol, want)
    assert vx == pytest.approx(want_vx) and vx == pytest.approx(13.68, rel=1e-6)


def test_unusual_files_go_to_mrcfile_or_fail_naming_the_file(tmp_path):
    rng = np.random.default_rng(2)
    cplx = (rng.normal(size=(4, 5, 6)) + 1j).astype(np.complex64)
    path = _write(tmp_path / 'complex.mrc', cplx)      # refused: its imaginary part would be lost
    with pytest.raises(DeepClusterError, match='complex-valued'):
        read_mrc_header(path)
    with pytest.raises(DeepClusterError, match='complex.mrc: complex-valued'):
        read_volume(path)

    stack = _write(tmp_path / 'stack.mrc', np.zeros((2, 4, 4, 4), np.float32))
    assert read_mrc_header(stack) is None
    with pytest.raises(DeepClusterError, match='stack.mrc: expected a 3D volume'):
        read_volume(stack)

    short = _write(tmp_path / 'short.mrc', np.zeros((8, 8, 8), np.float32))
    with open(short, 'r+b') as f:
        f.truncate(1024 + 100)
    assert read_mrc_header(short) is None
    with pytest.raises(DeepClusterError, match='short.mrc: not a readable MRC file'):
        read_volume(short)

    nosize = _write(tmp_path / 'nosize.mrc', np.ones((4, 4, 4), np.float32), voxel_size=0.0)
    assert read_volume(nosize)[1] is None
