"""Weighted back-projection of a tilt series and subtomogram extraction.

The reconstruction knows only the nominal tilt angles (the residual misalignment
stays in the data). Each tilt is weighted by a ramp |k_x'| (the tilt axis is y)
with a cosine roll-off to Nyquist, and by the exposure filter of the dose it
received (dose weighting); optionally phase-flipped with the tilt's central
defocus (half of the tomograms, as users do both). The tomogram is then scaled
and offset by arbitrary per-tomogram constants (no normalisation per subtomogram).

Extraction: a box around each pick (picking error ~0.5 output voxel), low-passed
to the output Nyquist and interpolated at the output voxel size (13.68 A, 10 A ...).
"""
import numpy as np
from scipy import ndimage

from .tiltseries import critical_exposure, ctf


def weighted_backprojection(stack, records, voxel, z_size, x_size, phase_flip=False, defocus=None):
    """Tomogram (z_size, Y, X) from the stack (n, Y, W); x size = the specimen's."""
    n, Y, W = stack.shape
    X = x_size
    ky = np.fft.fftfreq(Y, voxel)[:, None]
    kx = np.fft.rfftfreq(W, voxel)[None, :]
    kk = np.sqrt(kx ** 2 + ky ** 2)
    nyq = 0.5 / voxel
    ramp = np.abs(kx) * np.cos(np.clip(kk / nyq, 0, 1) * np.pi / 2) ** 2
    ramp[:, 0] = np.abs(kx[0, 1]) / 4      # keep a little of the mean
    tomo = np.zeros((Y, z_size, X), np.float32)
    zz = np.arange(z_size) - (z_size - 1) / 2.0
    xx = np.arange(X) - (X - 1) / 2.0
    for img, rec in zip(stack, records):
        th = np.deg2rad(rec['angle'])
        w = ramp * np.exp(-(rec['prior_dose'] + rec['dose'] / 2) / (2 * critical_exposure(kk)))
        if phase_flip:
            w = w * -np.sign(ctf(kk ** 2, defocus, 0.0))      # flip the CTF positive: protein stays dark
        q = np.fft.irfft2(np.fft.rfft2(img) * w, (Y, W)).astype(np.float32)
        xp = xx[None, :] * np.cos(th) - zz[:, None] * np.sin(th) + (W - 1) / 2.0     # (z, x)
        i0 = np.clip(np.floor(xp).astype(np.int64), 0, W - 2)
        f = np.clip(xp - i0, 0, 1).astype(np.float32)
        tomo += q[:, i0] * (1 - f) + q[:, i0 + 1] * f
    return (tomo * (np.pi / len(stack))).transpose(1, 0, 2)


def extract(tomo, centre, voxel_in, voxel_out, box):
    """A box^3 subtomogram at voxel_out around ``centre`` (z, y, x; fine px) with the
    tomogram periodic in y, x (as the specimen) and edge-padded in z."""
    Z, Y, X = tomo.shape
    span = box * voxel_out / voxel_in
    nb = int(np.ceil(span)) + 8
    base = np.round(centre).astype(int)
    lo = base - nb // 2
    zi = np.clip(np.arange(lo[0], lo[0] + nb), 0, Z - 1)
    yi = np.arange(lo[1], lo[1] + nb) % Y
    xi = np.arange(lo[2], lo[2] + nb) % X
    sub = tomo[np.ix_(zi, yi, xi)].astype(np.float64)
    if voxel_out > voxel_in * 1.0001:          # low-pass to the output Nyquist (soft edge)
        k = [np.fft.fftfreq(nb, voxel_in)] * 3
        kk = np.sqrt(k[0][:, None, None] ** 2 + k[1][None, :, None] ** 2 + k[2][None, None, :] ** 2)
        cut = 0.5 / voxel_out
        filt = 1.0 / (1.0 + (kk / cut) ** 16)
        m = sub.mean()
        sub = np.fft.ifftn(np.fft.fftn(sub - m) * filt).real + m
    off = centre - lo                                    # centre in sub's index space
    g = (np.arange(box) - (box - 1) / 2.0) * (voxel_out / voxel_in)
    coords = np.stack(np.meshgrid(g + off[0], g + off[1], g + off[2], indexing='ij'))
    return ndimage.map_coordinates(sub, coords, order=1, mode='nearest').astype(np.float32)
