"""Class averages of aligned subtomograms, aware of each member's missing wedge.

Each member carries a pose: the 4x4 matrix M of Scipion's convention,
``particle(r) = reference(M r)``, r = (x, y, z, 1) in voxels from the box centre
(voxel n // 2; see ``core/datamodel/tomograms.py``). Its aligned copy is
``aligned(s) = particle(M^-1 s)``, resampled trilinearly (``torch`` ``grid_sample``).
If ``M^-1 = [L | t]``, the aligned copy's spectrum is the particle's sampled at
``L k``, so its missing wedge is the particle's wedge mask resampled the same way
(linear part only, about the Fourier origin).

The average is formed in Fourier space, ``sum_i W_i F_i / (sum_i W_i + eps)``,
W_i the member's rotated wedge mask (computed exactly at each voxel), F_i its aligned spectrum and ``eps =
wiener * n`` a Wiener-like floor, so that directions sampled by few members are
not blown up and the directions no member sampled stay empty. Members alternate
into two halves (even / odd position), each averaged alike; their Fourier shell
correlation gives a resolution estimate (FSC 0.143).

The wedge (a tomogram's geometry, not a subtomogram's): arrays are (z, y, x), the
beam along z at tilt 0, the tilt axis y; a Fourier voxel is sampled when the angle
of its XZ projection, ``atan2(-kz, kx)`` folded into [-90, 90), is within the tilt
range (as ``core/datamodel/imaging.py`` simulates it, without the tilt-step gaps).
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from deepcluster.core import DeepClusterError

WIENER = 0.05


def wedge_mask(n, tilt_range):
    """(n, n, n) float32 mask of the sampled Fourier voxels, centred (DC at n // 2)."""
    lo, hi = float(tilt_range[0]), float(tilt_range[1])
    k = np.arange(n) - n // 2
    kz, _, kx = np.meshgrid(k, k, k, indexing='ij')
    ang = np.remainder(np.degrees(np.arctan2(-kz, kx)) + 90.0, 180.0) - 90.0
    mask = (ang >= lo - 1e-6) & (ang <= hi + 1e-6)
    mask |= (kx == 0) & (kz == 0)                       # the tilt axis is in every section
    return mask.astype(np.float32)


def check_pose(matrix):
    """The rotation part of a pose as a proper rotation (raises on a reflection or a
    non-orthonormal matrix, e.g. a scaled one)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise DeepClusterError('pose: need a 4x4 matrix, got shape %s' % (m.shape,))
    lin = m[:3, :3]
    if abs(np.linalg.det(lin) - 1.0) > 1e-3 or not np.allclose(lin @ lin.T, np.eye(3), atol=1e-3):
        raise DeepClusterError('pose: the 3x3 part is not a rotation (det %.3f)' % np.linalg.det(lin))
    return Rotation.from_matrix(lin)


def _theta(matrices, n):
    """affine_grid matrices (B, 3, 4) that read each output voxel s from M^-1 s,
    about voxel n // 2 (grid_sample's normalised coordinates, align_corners=True)."""
    inv = np.linalg.inv(np.asarray(matrices, dtype=np.float64))
    lin, t = inv[:, :3, :3], inv[:, :3, 3]
    c, h = float(n // 2), (n - 1) / 2.0
    # src = L (o - c) + t + c with o = h (u + 1): in normalised units u -> L u + (L d + t + c) / h - 1
    d = np.full(3, h - c)
    off = (np.einsum('bij,j->bi', lin, d) + t + c) / h - 1.0
    return torch.from_numpy(np.concatenate([lin, off[:, :, None]], 2)).float()


def align(volumes, matrices):
    """Aligned copies (B, n, n, n) of (B, n, n, n) volumes with poses (B, 4, 4)."""
    vols = torch.as_tensor(np.asarray(volumes, dtype=np.float32))
    b, n = vols.shape[0], vols.shape[-1]
    grid = F.affine_grid(_theta(matrices, n), (b, 1, n, n, n), align_corners=True)
    out = F.grid_sample(vols[:, None], grid, mode='bilinear', padding_mode='zeros', align_corners=True)
    return out[:, 0]


class WedgeAverage:
    """Accumulates members (in batches) into the two halves' Fourier sums (half
    spectra, ``rfftn`` layout)."""

    def __init__(self, n, tilt_range, wiener=WIENER):
        self.n, self.wiener = int(n), float(wiener)
        self.lo, self.hi = float(tilt_range[0]), float(tilt_range[1])
        clip = lambda a: np.tan(np.radians(np.clip(a, -89.999, 89.999)))
        self._tan_lo, self._tan_hi = float(clip(self.lo)), float(clip(self.hi))
        k = torch.fft.fftfreq(self.n) * self.n
        kx = torch.fft.rfftfreq(self.n) * self.n
        kz, ky, kx = torch.meshgrid(k, k, kx, indexing='ij')
        self._k = torch.stack([kx, ky, kz], -1).reshape(-1, 3)           # x, y, z per half-spectrum voxel
        self.shape = (self.n, self.n, self.n // 2 + 1)
        self.num = torch.zeros((2,) + self.shape, dtype=torch.complex64)
        self.den = torch.zeros((2,) + self.shape)
        self.count = [0, 0]

    def wedges(self, matrices):
        """(B, n, n, n//2+1) rotated wedge masks: voxel k of the aligned copy holds
        the particle's spectrum at L k, sampled if L k is in the particle's wedge."""
        inv = np.linalg.inv(np.asarray(matrices, dtype=np.float64))
        rows = torch.from_numpy(inv[:, [0, 2], :3]).float()              # x and z rows of L
        src = self._k @ rows.reshape(-1, 3).T                             # (F, 2B): (L k)_x, (L k)_z
        kx, kz = src[:, 0::2], src[:, 1::2]
        # angle of (kx, -kz) folded into [-90, 90) within [lo, hi], without atan2:
        # fold to kx >= 0, then lo <= angle <= hi <=> x tan(lo) <= y <= x tan(hi)
        sign = torch.where(kx < 0, -1.0, 1.0)
        x, y = kx * sign, -kz * sign
        w = (y >= x * self._tan_lo - 1e-4) & (y <= x * self._tan_hi + 1e-4) & (x > 1e-6)
        if self.lo <= -90.0 + 1e-6:                  # kx = 0 folds to -90 degrees
            w |= x <= 1e-6
        w |= (x.abs() < 0.5) & (kz.abs() < 0.5)                          # along the tilt axis
        return w.T.float().reshape((len(inv),) + self.shape)

    def add(self, volumes, matrices):
        vols = np.asarray(volumes, dtype=np.float32)
        if vols.ndim != 4 or vols.shape[1:] != (self.n,) * 3:
            raise DeepClusterError('class average: members must be %d^3 boxes, got %s'
                                   % (self.n, vols.shape[1:]))
        for m in matrices:
            check_pose(m)
        w = self.wedges(matrices)
        spec = torch.fft.rfftn(align(vols, matrices), dim=(1, 2, 3)) * w
        first = (self.count[0] + self.count[1]) % 2          # members alternate between halves
        for h in (0, 1):
            sel = slice((h - first) % 2, None, 2)
            self.num[h] += spec[sel].sum(0)
            self.den[h] += w[sel].sum(0)
            self.count[h] += len(range(len(vols))[sel])

    def _volume(self, num, den, count):
        if count == 0:
            return np.zeros((self.n,) * 3, np.float32)
        vol = torch.fft.irfftn(num / (den + self.wiener * count), s=(self.n,) * 3, dim=(0, 1, 2))
        return vol.numpy().astype(np.float32)

    def result(self, voxel_size=1.0):
        """dict(average, half1, half2 (n^3 float32), n, fsc (per shell), resolution (Å or None),
        coverage (share of Fourier voxels within Nyquist that some member sampled))."""
        n_all = sum(self.count)
        if n_all == 0:
            raise DeepClusterError('class average: no members')
        avg = self._volume(self.num.sum(0), self.den.sum(0), n_all)
        h1 = self._volume(self.num[0], self.den[0], self.count[0])
        h2 = self._volume(self.num[1], self.den[1], self.count[1])
        curve = fsc(h1, h2) if min(self.count) > 0 else []
        inside = (self._k.norm(dim=1) <= self.n // 2).view(self.shape)
        coverage = float((self.den.sum(0)[inside] > 0.5).float().mean())
        return dict(average=avg, half1=h1, half2=h2, n=n_all, fsc=curve,
                    resolution=fsc_resolution(curve, self.n, voxel_size), coverage=coverage)


def fsc(a, b):
    """Fourier shell correlation of two (n, n, n) volumes, shells 0..n//2 - 1."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    n = a.shape[0]
    k = np.fft.fftfreq(n) * n
    shell = np.round(np.sqrt(sum(x ** 2 for x in np.meshgrid(k, k, k, indexing='ij')))).astype(int).ravel()
    cross = np.bincount(shell, (fa * fb.conj()).real.ravel())
    pa = np.bincount(shell, (np.abs(fa) ** 2).ravel())
    pb = np.bincount(shell, (np.abs(fb) ** 2).ravel())
    curve = cross / np.sqrt(np.maximum(pa * pb, 1e-30))
    return [float(v) for v in curve[:n // 2]]


def fsc_resolution(curve, n, voxel_size, threshold=0.143):
    """Resolution (Å) where the FSC first falls below ``threshold``; None if never
    above it past the origin; Nyquist if it never falls."""
    if len(curve) < 2:
        return None
    for s in range(1, len(curve)):
        if curve[s] < threshold:
            return None if s == 1 else float(n * voxel_size / (s - 0.5))
    return float(2 * voxel_size)


def class_averages(load, members, matrices, tilt_range, voxel_size, wiener=WIENER, batch_size=32):
    """Averages of classes: ``members`` {class: [item index, ...]} (in the order that
    makes the halves), ``load(indices)`` -> (B, n, n, n) volumes, ``matrices`` (N, 4, 4)
    poses by item index. Returns {class: WedgeAverage.result(...)}."""
    out = {}
    matrices = np.asarray(matrices, dtype=np.float64)
    for c, idx in members.items():
        idx = list(idx)
        acc = None
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            vols = np.asarray(load(chunk), dtype=np.float32)
            if acc is None:
                acc = WedgeAverage(vols.shape[-1], tilt_range, wiener)
            acc.add(vols, matrices[chunk])
        if acc is not None:
            out[c] = acc.result(voxel_size)
    return out
