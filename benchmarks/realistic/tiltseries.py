"""An explicit cryo-ET tilt series of a specimen slab (weak-phase approximation).

Per tilt (dose-symmetric order, +-60 deg, 2 or 3 deg steps, 100-120 e/A^2 in all):
- the projected potential along the tilted beam (ray sums through the slab,
  periodic in x so every ray crosses a full crowded slab), in z-layers;
- the CTF of each layer *at its own defocus*: in the tilted specimen the defocus
  changes along x' (perpendicular to the tilt axis) and with height, so each
  layer's projection is filtered in strips of x' at the strip's defocus
  (gradient and height both included); 300 kV, Cs 2.7 mm, 7 % amplitude contrast,
  a B-factor envelope;
- radiation damage: the signal of spatial frequency k decays with the dose
  received before it, exp(-N / 2 N_e(k)), N_e = 0.245 k^-1.665 + 2.81
  (Grant & Grigorieff 2015);
- inelastic loss in the ice (zero-loss filtered image): exp(-t / (lambda cos theta)),
  lambda = 350 nm, t = the ice thickness;
- residual misalignment: a random in-plane shift (~5 A), rotation (~0.3 deg) and
  tilt-angle error (~0.2 deg) the reconstruction does not know;
- Poisson-distributed electron counts at the tilt's dose per pixel.
"""
import numpy as np
from scipy import ndimage

WAVELENGTH_A = 0.01969          # 300 kV
CS_A = 2.7e7
AMPLITUDE_CONTRAST = 0.07
PHASE_PER_A = 0.00065 * 2.0     # sigma (rad / V A) x protein-minus-ice potential (~2 V)
INELASTIC_MFP_A = 3500.0
LAYER_PX = 32
STRIP_DEFOCUS_A = 400.0         # strips so that the defocus changes < 40 nm within one


def dose_symmetric(max_tilt, step):
    """Tilt angles in acquisition order (Hagen scheme: 0, then +-, in groups of two)."""
    ks = list(range(1, int(round(max_tilt / step)) + 1))
    order = [0.0]
    sign = 1
    i = 0
    while i < len(ks):
        for s in (sign, -sign):
            for k in ks[i:i + 2]:
                order.append(s * k * step)
        i += 2
        sign = -sign
    return order


def critical_exposure(k):
    return 0.245 * np.power(np.maximum(k, 1e-4), -1.665) + 2.81


def ctf(k2, defocus_a, b_factor):
    chi = np.pi * WAVELENGTH_A * defocus_a * k2 - 0.5 * np.pi * CS_A * WAVELENGTH_A ** 3 * k2 ** 2
    return -(np.sqrt(1 - AMPLITUDE_CONTRAST ** 2) * np.sin(chi) + AMPLITUDE_CONTRAST * np.cos(chi)) \
        * np.exp(-b_factor * k2 / 4.0)


def detector_width(shape, max_tilt_deg):
    Zs, Y, X = shape
    t = np.deg2rad(max_tilt_deg)
    return int(np.ceil(X * np.cos(t) + (Zs + 80) * np.sin(t))) + 8


def project_planes(vol, theta, W):
    """Ray sums (Zs, Y, W) of every z-plane's contribution at tilt theta: the beam
    crosses plane z at x = (x' + z sin) / cos (centred coordinates), with path
    length 1 / cos per plane; linear interpolation along x, periodic in x.
    Summing planes gives the projection; summing groups of planes gives layers."""
    Zs, Y, X = vol.shape
    c, s = np.cos(theta), np.sin(theta)
    xp = np.arange(W) - (W - 1) / 2.0
    z = np.arange(Zs) - (Zs - 1) / 2.0
    x = (xp[None, :] + z[:, None] * s) / c + (X - 1) / 2.0            # (Zs, W)
    i0 = np.floor(x).astype(np.int64)
    f = (x - i0).astype(np.float32)[:, None, :]
    i0 = np.broadcast_to((i0 % X)[:, None, :], (Zs, Y, W))
    i1 = np.broadcast_to(((i0[:, :1, :] + 1) % X), (Zs, Y, W))
    a = np.take_along_axis(vol, i0, 2)
    b = np.take_along_axis(vol, i1, 2)
    return (a * (1 - f) + b * f) / c


def simulate_tilt_series(vol, voxel, rng, params):
    """(stack (n_tilts, Y, W) float32 of normalised counts - 1, tilt record list)."""
    Zs, Y, X = vol.shape
    angles = dose_symmetric(params['max_tilt'], params['step'])
    n = len(angles)
    dose_per_tilt = params['dose'] / n
    W = detector_width(vol.shape, params['max_tilt'])
    ky = np.fft.fftfreq(Y, voxel)[:, None]
    kx = np.fft.rfftfreq(W, voxel)[None, :]
    k2 = ky ** 2 + kx ** 2
    kk = np.sqrt(k2)
    xp = np.arange(W) - (W - 1) / 2.0
    stack = np.zeros((n, Y, W), np.float32)
    records = []
    prior = 0.0
    for i, a in enumerate(angles):
        true = a + rng.normal(0, params['tilt_error_deg'])
        th = np.deg2rad(true)
        damage = np.exp(-(prior + dose_per_tilt / 2) / (2 * critical_exposure(kk)))
        img = np.zeros((Y, W))
        planes = project_planes(vol, th, W)
        n_strips = max(1, int(np.ceil(W * voxel * abs(np.tan(th)) / STRIP_DEFOCUS_A)))
        edges = np.linspace(0, W, n_strips + 1).round().astype(int)
        for z_lo in range(0, Zs, LAYER_PX):
            z_hi = min(Zs, z_lo + LAYER_PX)
            proj = planes[z_lo:z_hi].sum(0) * voxel * PHASE_PER_A     # phase (rad)
            F = np.fft.rfft2(proj)
            zmid = (z_lo + z_hi - 1) / 2.0 - (Zs - 1) / 2.0
            for a0, a1 in zip(edges[:-1], edges[1:]):
                xc = xp[(a0 + a1 - 1) // 2]
                t_beam = (zmid + xc * np.sin(th)) / np.cos(th)             # px along the beam
                df = params['defocus'] - t_beam * voxel                     # higher = nearer focus
                part = np.fft.irfft2(F * (2.0 * ctf(k2, df, params['bfactor']) * damage), (Y, W))
                img[:, a0:a1] += part[:, a0:a1]
        # residual misalignment: the detector sees the image rotated and shifted
        rot = rng.normal(0, params['rot_error_deg'])
        sh = rng.normal(0, params['shift_error_a'] / voxel, 2)
        img = ndimage.rotate(img, rot, reshape=False, order=1, mode='nearest')
        img = ndimage.shift(img, sh, order=1, mode='nearest')
        att = np.exp(-params['ice_a'] / (INELASTIC_MFP_A * np.cos(np.deg2rad(a))))
        mean_counts = dose_per_tilt * voxel ** 2 * att
        counts = rng.poisson(np.clip(mean_counts * (1.0 + img), 0, None))
        stack[i] = counts / counts.mean() - 1.0
        records.append({'angle': a, 'true_angle': true, 'prior_dose': prior, 'dose': dose_per_tilt,
                        'rot': rot, 'shift_px': sh.tolist(), 'mean_counts': mean_counts})
        prior += dose_per_tilt
    return stack, records
