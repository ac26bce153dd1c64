"""Synthetic tomograms around simulated subtomograms, and the particles' true poses:
what an extraction protocol would have registered for them.

Layout: the particles of a set, in set order, fill tomograms of ``per_tomogram``
particles each. In a tomogram their boxes sit flush on a lattice of gx x gy x gz
boxes (gz = 2 once there are 8 or more: a slab, as a lamella), and the tomogram
is the mosaic of the subtomograms binned by ``binning`` (block mean), at
``binning`` x the subtomograms' voxel size, as tomograms for picking usually are.
A particle's coordinate is the centre of its box (voxel n // 2 of the box) in the
binned tomogram's voxels; cutting a box there at binning 1 gives the subtomogram
back, and the particle's residual shift from that centre is in its pose.

Pose convention (Scipion's, as ``tomo.objects.convertMatrix`` documents it): the
4x4 matrix M with ``particle(r) = reference(M r)``, r = (x, y, z, 1) in voxels from
the box centre (voxel n // 2 on every axis), x being the last (fastest) array
axis. The simulator draws ``particle(p) = template(R^T (p - s))`` in (z, y, x)
offsets from the centre (R the rotation template -> box, s the sub-voxel shift);
``pose_matrices`` turns (R, s) into M.
"""
import csv
import math
import os

import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.inference.volumes import write_volume

MATRIX_COLUMNS = ['m%d%d' % (i, j) for i in range(3) for j in range(4)]   # rows 0..2 of M


def pose_matrices(rot_zyx, shift_zyx):
    """(B, 4, 4) Scipion-convention matrices (x, y, z order) from the simulator's
    rotations (B, 3, 3; template -> box, z, y, x order) and shifts (B, 3; voxels, z, y, x)."""
    rot = np.asarray(rot_zyx, dtype=np.float64)[:, ::-1, ::-1]           # the same map in x, y, z
    shift = np.asarray(shift_zyx, dtype=np.float64)[:, ::-1]
    inv = np.transpose(rot, (0, 2, 1))                                    # R^T: box -> template
    m = np.zeros((len(rot), 4, 4))
    m[:, :3, :3] = inv
    m[:, :3, 3] = -np.einsum('bij,bj->bi', inv, shift)
    m[:, 3, 3] = 1.0
    return m


class TomogramLayout:
    """Where particle i of n (box ``box`` voxels) sits: its tomogram and coordinate."""

    def __init__(self, n, box, voxel_size, per_tomogram=200, binning=2):
        if int(per_tomogram) < 1:
            raise DeepClusterError('particles per tomogram %s: must be at least 1' % per_tomogram)
        if int(binning) < 1 or int(binning) > int(box) // 4:
            raise DeepClusterError('tomogram binning %s: must be within 1 and box/4 (%d)'
                                   % (binning, int(box) // 4))
        self.n, self.box, self.voxel_size = int(n), int(box), float(voxel_size)
        self.per_tomogram, self.binning = min(int(per_tomogram), max(self.n, 1)), int(binning)
        k = self.per_tomogram
        self.gz = 2 if k >= 8 else 1
        self.gx = int(math.ceil(math.sqrt(k / self.gz)))
        self.gy = int(math.ceil(k / (self.gz * self.gx)))
        self.pitch = -(-self.box // self.binning)                        # binned voxels per box
        self.shape = (self.gz * self.pitch, self.gy * self.pitch, self.gx * self.pitch)   # z, y, x
        self.n_tomograms = -(-self.n // k)

    @property
    def tomogram_voxel_size(self):
        return self.voxel_size * self.binning

    def name(self, t):
        return 'tomo_%03d' % t

    def tomogram_of(self, i):
        return np.asarray(i) // self.per_tomogram

    def slot(self, i):
        """(z, y, x) lattice indices of particle(s) i in their tomogram."""
        return np.unravel_index(np.asarray(i) % self.per_tomogram, (self.gz, self.gy, self.gx))

    def coordinates(self, i):
        """(..., 3) x, y, z of the box centres in binned tomogram voxels, from the
        centre of voxel 0 (the bottom-left-corner convention of IMOD/EMAN/Xmipp)."""
        iz, iy, ix = self.slot(i)
        b = self.binning
        lat = np.stack([ix, iy, iz], -1).astype(np.float64)
        return (lat * self.pitch * b + self.box // 2 - (b - 1) / 2.0) / b

    def bin(self, vol):
        """Block mean of a (box, box, box) volume down to (pitch, pitch, pitch)."""
        b, p = self.binning, self.pitch
        vol = np.asarray(vol, dtype=np.float32)
        if p * b != self.box:
            pad = p * b - self.box
            vol = np.pad(vol, ((0, pad),) * 3)
        return vol.reshape(p, b, p, b, p, b).mean((1, 3, 5))


class TomogramWriter:
    """Pastes subtomograms, in order, into their tomograms and writes each tomogram
    (``<folder>/<name>.mrc``) as soon as it is complete; one tomogram in memory."""

    def __init__(self, layout, folder):
        self.layout, self.folder = layout, folder
        os.makedirs(folder, exist_ok=True)
        self._current, self._buffer, self.files = None, None, []

    def add(self, i, vol):
        lay = self.layout
        t = int(lay.tomogram_of(i))
        if t != self._current:
            self._flush()
            self._current, self._buffer = t, np.zeros(lay.shape, np.float32)
        iz, iy, ix = (int(v) for v in lay.slot(i))
        p = lay.pitch
        self._buffer[iz * p:(iz + 1) * p, iy * p:(iy + 1) * p, ix * p:(ix + 1) * p] = lay.bin(vol)

    def _flush(self):
        if self._current is None:
            return
        fn = os.path.join(self.folder, self.layout.name(self._current) + '.mrc')
        write_volume(fn, self._buffer, self.layout.tomogram_voxel_size, atomic=False)
        self.files.append(fn)
        self._current, self._buffer = None, None

    def close(self):
        self._flush()
        return self.files


def write_particles(path, files, matrices, layout=None):
    """particles.csv: per subtomogram its file, pose (m00..m23: rows 0-2 of M) and,
    with a layout, its tomogram and box centre (x, y, z in binned tomogram voxels)."""
    head = ['file'] + MATRIX_COLUMNS + (['tomogram', 'x', 'y', 'z'] if layout else [])
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(head)
        idx = np.arange(len(files))
        coords = layout.coordinates(idx) if layout else None
        tomos = layout.tomogram_of(idx) if layout else None
        for i, fn in enumerate(files):
            row = [fn] + ['%.7g' % v for v in matrices[i][:3].ravel()]
            if layout:
                row += [layout.name(int(tomos[i]))] + ['%.3f' % v for v in coords[i]]
            w.writerow(row)


def read_particles(path):
    """{file: dict(matrix=(4, 4) array, tomogram=str or None, xyz=(3,) or None)}."""
    out = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            m = np.eye(4)
            m[:3] = np.array([float(row[c]) for c in MATRIX_COLUMNS]).reshape(3, 4)
            xyz = np.array([float(row[c]) for c in 'xyz']) if row.get('x') else None
            out[row['file']] = dict(matrix=m, tomogram=row.get('tomogram') or None, xyz=xyz)
    return out
