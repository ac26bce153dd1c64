"""MRC volumes in and out, and the geometry every stage shares.

Arrays are float32 in MRC order (z, y, x). Every writer goes through a temp file
that is renamed into place, so a crash never leaves a half-written result.
"""
import contextlib
import csv
import os
import shutil
import tempfile
import warnings

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import byte_order_from_machine_stamp, dtype_from_mode

from deepcluster.core import DeepClusterError

MRC_SUFFIXES = ('.mrc', '.map', '.rec', '.mrcs')


# ----------------------------------------------------------------- atomic output
@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside ``path``; move it onto ``path`` only on success.

    Works for files and folders (the caller creates what it likes at the temp path).
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    tmp = tempfile.mkdtemp(prefix='.%s.' % base, dir=parent)
    tmp_target = os.path.join(tmp, base)
    try:
        yield tmp_target
        if os.path.isdir(path) and os.path.isdir(tmp_target):
            old = path + '.old%d' % os.getpid()
            os.replace(path, old)
            os.replace(tmp_target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------- read/write
_PLAIN_MODES = (0, 1, 2, 6, 12)    # real-valued: int8, int16, float32, uint16, float16


def plain_mrc_layout(head, file_size):
    """(shape zyx, data dtype, data offset, voxel size Å or 0) of a plain MRC volume
    from its first 1024 bytes, or None for anything else (stacks, complex modes,
    short files, unknown stamps: mrcfile then reads it, with its checks and
    messages). Parsing these bytes here is ~5x faster than ``mrcfile.open``, which
    was a fifth of the time to embed 20,000 subtomograms from files."""
    if len(head) < 1024 or head[208:212] != b'MAP ':
        return None
    try:
        order = byte_order_from_machine_stamp(head[212:216])
    except ValueError:
        return None
    h = np.frombuffer(head, HEADER_DTYPE.newbyteorder(order), count=1)[0]
    mode, ispg = int(h['mode']), int(h['ispg'])
    shape = (int(h['nz']), int(h['ny']), int(h['nx']))
    if mode not in _PLAIN_MODES or min(shape) < 1 or ispg >= 401 or (ispg == 0 and shape[0] == 1):
        return None
    dtype = dtype_from_mode(mode).newbyteorder(order)
    offset = 1024 + int(h['nsymbt'])
    if int(h['nsymbt']) < 0 or file_size < offset + int(np.prod(shape)) * dtype.itemsize:
        return None
    mx = int(h['mx'])
    vx = float(h['cella']['x']) / mx if mx > 0 else 0.0
    return shape, dtype, offset, (vx if np.isfinite(vx) and vx > 0 else 0.0)


def read_mrc_header(path):
    """``plain_mrc_layout`` of a file (None if it is not a plain MRC volume)."""
    with open(path, 'rb') as f:
        return plain_mrc_layout(f.read(1024), os.fstat(f.fileno()).st_size)


def read_volume(path, check_finite=True):
    """Return (volume float32 zyx, voxel size in Å or None if the header has none)."""
    if not os.path.isfile(path):
        raise DeepClusterError('%s: no such file' % path)
    with open(path, 'rb') as f:
        buf = f.read()
    layout = plain_mrc_layout(buf[:1024], len(buf))
    if layout:
        shape, dtype, offset, vx = layout
        data = np.frombuffer(buf, dtype, int(np.prod(shape)), offset).reshape(shape).astype(np.float32)
    else:
        data, vx = _read_with_mrcfile(path)
    if data.ndim != 3:
        raise DeepClusterError('%s: expected a 3D volume, got an array of shape %s '
                               '(stacks of volumes are not supported; split them)' % (path, data.shape))
    if check_finite and not np.isfinite(data).all():
        raise DeepClusterError('%s: contains NaN or infinite voxels; fix or remove this file' % path)
    return data, (vx if np.isfinite(vx) and vx > 0 else None)


def _read_with_mrcfile(path):
    """(data float32, voxel size) by mrcfile's permissive reader: any MRC it can read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with mrcfile.open(path, permissive=True, mode='r') as mrc:
                if mrc.data is None:
                    raise ValueError('no data block')
                return np.array(mrc.data, dtype=np.float32), float(mrc.voxel_size.x)
    except Exception as e:  # mrcfile raises many kinds; the user needs one line
        raise DeepClusterError('%s: not a readable MRC file (%s)' % (path, str(e).splitlines()[0]
                                                                      if str(e) else type(e).__name__))


def write_volume(path, data, voxel_size, atomic=True):
    """Write a float32 MRC with the voxel size in the header, atomically (pass
    ``atomic=False`` when writing many files inside a folder that is itself atomic)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not atomic:
        _write_mrc(path, data, voxel_size)
        return
    with atomic_path(path) as tmp:
        _write_mrc(tmp, data, voxel_size)


def _write_mrc(path, data, voxel_size):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = float(voxel_size)
        mrc.update_header_stats()


# ------------------------------------------------------------------- geometry
def pad_to_cube(vol, fill=None):
    """Pad a non-cubic map to a cube (centred), with its border mean by default."""
    n = max(vol.shape)
    if vol.shape == (n, n, n):
        return vol
    fill = border_mean(vol) if fill is None else fill
    out = np.full((n, n, n), fill, dtype=np.float32)
    sl = tuple(slice((n - s) // 2, (n - s) // 2 + s) for s in vol.shape)
    out[sl] = vol
    return out


def border_mean(vol):
    """Mean of the outermost voxel layer: the background level of a map."""
    mask = np.ones(vol.shape, bool)
    mask[1:-1, 1:-1, 1:-1] = False
    return float(vol[mask].mean())


def fit_box(vol, box, fill=None):
    """Centre-crop or pad a cubic volume to ``box``^3 (pad with the border mean)."""
    n = vol.shape[0]
    if n == box:
        return vol
    if n > box:
        a = (n - box) // 2
        return vol[a:a + box, a:a + box, a:a + box]
    fill = border_mean(vol) if fill is None else fill
    out = np.full((box, box, box), fill, dtype=np.float32)
    a = (box - n) // 2
    out[a:a + n, a:a + n, a:a + n] = vol
    return out


def resample(vol, voxel_size, target_voxel_size):
    """Fourier-resample a cubic volume from one voxel size to another.

    Cropping (or zero-padding) the spectrum is band-limited interpolation: no
    aliasing when shrinking, no new detail when growing. The new side is rounded
    to whole voxels, so the achieved voxel size may differ from the target by up to
    half a voxel over the box (returned so callers can report it).
    """
    n = vol.shape[0]
    if any(s != n for s in vol.shape):
        raise DeepClusterError('resample needs a cubic volume, got shape %s' % (vol.shape,))
    m = max(2, int(round(n * voxel_size / target_voxel_size)))
    if m == n:
        return vol.astype(np.float32, copy=False), float(voxel_size)
    f = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    k = min(n, m)
    src = slice(n // 2 - k // 2, n // 2 - k // 2 + k)   # centred on the DC term
    dst = slice(m // 2 - k // 2, m // 2 - k // 2 + k)
    out = np.zeros((m, m, m), np.complex128)
    out[dst, dst, dst] = f[src, src, src]
    res = np.fft.ifftn(np.fft.ifftshift(out)).real * (m / n) ** 3
    return res.astype(np.float32), float(voxel_size) * n / m


def normalise(vol):
    """Zero mean, unit standard deviation (a flat volume becomes all zeros)."""
    vol = np.asarray(vol, dtype=np.float32)
    sd = float(vol.std())
    return (vol - vol.mean()) / sd if sd > 0 else np.zeros_like(vol)


# ------------------------------------------------------------------ input lists
def list_volume_files(inputs):
    """Expand inputs (files, folders, text files listing paths) to MRC paths.

    Order: as given; a folder contributes its MRC files sorted by name. Raises a
    one-line error for missing paths, empty folders or an empty result.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(f for f in os.listdir(item) if f.lower().endswith(MRC_SUFFIXES))
            if not found:
                raise DeepClusterError('%s: folder holds no .mrc files' % item)
            out.extend(os.path.join(item, f) for f in found)
        elif os.path.isfile(item) and item.lower().endswith(MRC_SUFFIXES):
            out.append(item)
        elif os.path.isfile(item) and item.lower().endswith(('.txt', '.lst', '.list')):
            base = os.path.dirname(os.path.abspath(item))
            with open(item) as f:
                listed = [ln.strip() for ln in f if ln.strip() and not ln.startswith('#')]
            if not listed:
                raise DeepClusterError('%s: list file names no volumes' % item)
            for p in listed:
                p = p if os.path.isabs(p) else os.path.join(base, p)
                if not os.path.isfile(p):
                    raise DeepClusterError('%s: lists %s, which does not exist' % (item, p))
                out.append(p)
        elif os.path.exists(item):
            raise DeepClusterError('%s: not an MRC file (.mrc/.map/.rec), folder or .txt list' % item)
        else:
            raise DeepClusterError('%s: no such file or folder' % item)
    if not out:
        raise DeepClusterError('no input volumes given')
    return out


# ----------------------------------------------------------------------- labels
def write_labels(path, files, labels):
    """labels.csv with columns file,label (label = class name), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label'])
            for fn, lab in zip(files, labels):
                w.writerow([fn, lab])


def read_labels(path):
    """Return {file: label} from a labels.csv (file paths as written)."""
    if not os.path.isfile(path):
        raise DeepClusterError('%s: no such labels file' % path)
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {'file', 'label'} <= set(reader.fieldnames):
            raise DeepClusterError('%s: expected a CSV with columns file,label' % path)
        rows = {r['file']: r['label'] for r in reader}
    if not rows:
        raise DeepClusterError('%s: no rows' % path)
    return rows
