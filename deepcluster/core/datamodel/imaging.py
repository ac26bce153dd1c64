"""Imaging physics of the data model, in 3D Fourier space (torch, any device).

A tilt series reconstructed by weighted back-projection samples the 3D spectrum
of the specimen on the central sections normal to each beam direction (the
projection-slice theorem). So, under the weak-phase-object approximation and
ignoring the defocus gradient across the tilted specimen (and the curvature of
the Ewald sphere), a subtomogram's spectrum is the specimen's spectrum times,
per Fourier voxel, the filter of the tilt image whose central section holds it:
its CTF (with its own defocus), its exposure (dose) filter and an envelope; and
Fourier voxels that no section reaches (the missing wedge, and the gaps between
sections at high frequency) hold neither signal nor noise.

Conventions: arrays are (z, y, x); the beam is along z at tilt 0; the tilt axis
is y (as in Scipion/IMOD tomograms); tilt theta turns the beam from +z towards
+x. Spectra are ``torch.fft.rfftn`` half spectra over the last three axes,
flattened to ``(..., F)`` with F = n * n * (n // 2 + 1).
"""
import math


import torch


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å."""
    v = voltage_kv * 1e3
    return 12.2643 / math.sqrt(v * (1 + 0.978466e-6 * v))


def critical_exposure(k):
    """Grant & Grigorieff (2015) critical exposure (e/Å^2) at spatial frequency k (1/Å), 300 kV."""
    return 0.245 * k.clamp_min(1e-6) ** -1.665 + 2.81


def tilt_angles(tilt_range, step):
    """Tilt angles (degrees) from min to max (inclusive where it falls on the grid)."""
    lo, hi = tilt_range
    n = int(math.floor((hi - lo) / step + 1e-6)) + 1
    return [lo + i * step for i in range(n)]


def dose_symmetric_order(angles):
    """Acquisition rank of each tilt: 0 first, then alternating +/- with |theta|."""
    keyed = sorted(range(len(angles)), key=lambda i: (round(abs(angles[i]), 6), -angles[i]))
    rank = [0] * len(angles)
    for r, i in enumerate(keyed):
        rank[i] = r
    return rank


class FourierGrid:
    """Per-(box, voxel size) constants of the half spectrum, flattened to (F,)."""

    def __init__(self, box, voxel_size, device='cpu'):
        self.box, self.voxel_size = int(box), float(voxel_size)
        n, h = self.box, self.box // 2 + 1
        self.shape = (n, n, h)
        self.size = n * n * h
        fz = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)
        fx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64)
        kz, ky, kx = torch.meshgrid(fz, fz, fx, indexing='ij')
        self.kz, self.ky, self.kx = kz.reshape(-1), ky.reshape(-1), kx.reshape(-1)   # cycles per box
        self.kidx = torch.sqrt(self.kz ** 2 + self.ky ** 2 + self.kx ** 2)
        self.k = self.kidx / (n * voxel_size)                                          # 1/Å
        # Parseval weights for a half spectrum: columns kx=0 (and kx=n/2 for even n) once
        w = torch.full((n, n, h), 2.0, dtype=torch.float64)
        w[..., 0] = 1.0
        if n % 2 == 0:
            w[..., -1] = 1.0
        w = w.reshape(-1)
        w[0] = 0.0                       # no DC: variances about the mean
        self.weight = w
        self.neg = (-torch.arange(n)) % n   # index of -k along a full axis
        self.device = torch.device(device)

    def to(self, t, dtype=torch.float32):
        return t.to(device=self.device, dtype=dtype)


def wedge_tables(grid, tilt_range, step):
    """For one tilt scheme: (mask, tilt index, exposure rank, n_tilts), all (F,).

    A Fourier voxel is sampled when its distance to the nearest tilt's central
    section is at most half a voxel (sections are one voxel thick), so the wedge
    edge is exact and, at high frequency, the gaps between sections of a coarse
    tilt step stay empty too.
    """
    angles = tilt_angles(tilt_range, step)
    lo = angles[0]

    def nearest(kz, kx):
        # angle of the XZ projection of k within the family of sections, folded to [-90, 90)
        ang = torch.remainder(torch.rad2deg(torch.atan2(-kz, kx)) + 90.0, 180.0) - 90.0
        idx = torch.round((ang - lo) / step).clamp(0, len(angles) - 1).long()
        dist = torch.sqrt(kz ** 2 + kx ** 2) * torch.sin(torch.deg2rad(ang - lo - idx.double() * step)).abs()
        return idx, dist <= 0.5 + 1e-9

    idx, mask = nearest(grid.kz, grid.kx)
    if grid.box % 2 == 0:
        # a Nyquist coefficient is also its own alias at -n/2: keep it only if both are sampled
        nyq = grid.box / 2.0
        kz2 = torch.where(grid.kz.abs() == nyq, -grid.kz, grid.kz)
        kx2 = torch.where(grid.kx.abs() == nyq, -grid.kx, grid.kx)
        for a, c in ((kz2, grid.kx), (grid.kz, kx2), (kz2, kx2)):
            mask &= nearest(a, c)[1]
    mask = mask.double()
    rank = torch.tensor(dose_symmetric_order(angles), dtype=torch.float64)
    return mask, idx, rank[idx], len(angles)


def hermitian_planes(z, n):
    """Make the self-conjugate planes (kx=0, and kx=n/2 for even n) of a batch of
    half spectra (B, n, n, h) Hermitian, keeping E|z|^2: then ``irfftn`` is exactly
    the inverse of ``rfftn`` and Parseval holds with ``FourierGrid.weight``."""
    neg = (-torch.arange(n, device=z.device)) % n
    cols = [0] + ([n // 2] if n % 2 == 0 else [])
    for c in cols:
        p = z[..., c]
        z[..., c] = (p + p[:, neg][:, :, neg].conj()) * (0.5 ** 0.5)
    return z


def parseval_variance(spec, weight, n):
    """Variance (about the mean) of the real volumes whose half spectra are ``spec``
    (B, F), exactly, with the ``FourierGrid.weight`` (B,)."""
    return (spec.real ** 2 + spec.imag ** 2) @ weight / float(n) ** 6


class ImagingModel:
    """Fourier-space imaging of a batch: tables per (box, voxel size, tilt scheme)
    precomputed once; ``draw`` takes the per-subtomogram random parameters,
    ``image`` applies them. Device-agnostic, no host syncs."""

    def __init__(self, cfg, device='cpu'):
        dev = self.device = torch.device(device)
        self.cfg = cfg
        n = self.n = int(cfg.box)
        g = FourierGrid(n, cfg.voxel_size, dev)
        steps = (cfg.tilt_steps,) if isinstance(cfg.tilt_steps, (int, float)) else tuple(cfg.tilt_steps)
        tables = [wedge_tables(g, cfg.tilt_range, s) for s in steps]
        self.n_tilts = max(t[3] for t in tables)
        ne = critical_exposure(g.k) * (1.0 if cfg.voltage_kv >= 250 else 0.8)
        sign = -1.0 if cfg.contrast == 'dark' else 1.0
        nodc = (g.kidx > 0).double()
        self.wedge = torch.stack([t[0] for t in tables]).float().to(dev)                  # (S, F)
        self.wedge_signed = (sign * self.wedge).to(dev)
        self.wedge_nodc = (self.wedge * nodc.float().to(dev)).contiguous()
        self.tilt = torch.stack([t[1] for t in tables]).to(dev)
        self.doseq = torch.stack([((t[2] + 0.5) / t[3]) / (2 * ne) for t in tables]).float().to(dev)
        lam = electron_wavelength(cfg.voltage_kv)
        k2 = g.k ** 2
        self.chi1 = (math.pi * lam * k2).float().to(dev)                                # x defocus (Å)
        self.chi0 = (-0.5 * math.pi * cfg.cs_mm * 1e7 * lam ** 3 * k2 ** 2
                     + math.asin(cfg.amplitude_contrast)).float().to(dev)
        self.k2_4 = (k2 / 4).float().to(dev)
        # largest |k| component (cycles/box): Fourier resampling crops a cube
        self.kcube = torch.maximum(torch.maximum(g.kz.abs(), g.ky.abs()), g.kx.abs()).float().to(dev)
        self.logk = torch.log(g.kidx.clamp_min(1.0) / (n / 2.0)).float().to(dev)
        self.weight = g.weight.float().to(dev)
        self.weight2 = self.weight.repeat_interleave(2)        # for view_as_real spectra
        # ice: smooth field over |k| <= 3 cycles/box, unit variance in real space
        sel = (g.kidx > 0) & (g.kidx <= 3.0)
        col = torch.exp(-g.kidx[sel] ** 2 / (2 * 1.5 ** 2))
        col = col * n ** 3 / torch.sqrt((g.weight[sel] * col ** 2).sum())
        self.ice_idx = sel.nonzero().squeeze(1).to(dev)
        self.ice_col = col.float().to(dev)

    def variance(self, spec):
        """Exact variance (about the mean) of the volumes of half spectra (B, F)."""
        return (torch.view_as_real(spec).reshape(spec.shape[0], -1) ** 2) @ self.weight2 / float(self.n) ** 6

    def draw(self, b, u, gauss, generator):
        """Per-subtomogram imaging parameters (a fixed sequence of draws)."""
        c, n, dev = self.cfg, self.n, self.device
        p = dict(
            scheme=(u(b) * self.wedge.shape[0]).long().clamp_max(self.wedge.shape[0] - 1),
            defocus=(u(b, 1, lo=c.defocus_um[0], hi=c.defocus_um[1])
                     + c.defocus_tilt_jitter_um * gauss(b, self.n_tilts)) * 1e4,
            flip=u(b) < c.phase_flip_probability,
            dose=u(b, lo=c.dose[0], hi=c.dose[1]),
            bfactor=u(b, lo=c.bfactor[0], hi=c.bfactor[1]),
            snr=torch.exp(u(b, lo=math.log(c.snr[0]), hi=math.log(c.snr[1]))),
            alpha=u(b, lo=c.noise_exponent[0], hi=c.noise_exponent[1]),
            # cutoff (cycles/box) of data resampled from a coarser voxel size; > n/2 = none
            band=torch.where(u(b) < c.bandlimit_probability,
                             n * c.voxel_size / (2 * u(b, lo=c.bandlimit_voxel[0], hi=c.bandlimit_voxel[1])),
                             torch.full((b,), float(n), device=dev)),
            ice=u(b, lo=c.ice_amplitude[0], hi=c.ice_amplitude[1]),
            ice_z=torch.randn(b, self.ice_idx.numel(), generator=generator, device=dev, dtype=torch.complex64),
            noise=torch.randn(b, n, n, n // 2 + 1, generator=generator, device=dev, dtype=torch.complex64))
        return p

    def image(self, pspec, spec, p, ref_scale, return_clean=False, spectra=None):
        """Image a batch. ``pspec``: spectra of the centre particles (real or ghost),
        the SNR reference; ``spec``: spectra of everything in the box (B, F).
        Returns real volumes (B, n, n, n) [, clean volumes in the same units].
        A dict ``spectra`` receives the half spectra (B, F) before normalisation:
        'observed', 'clean' (everything imaged, no noise), 'particle' (the centre
        particle alone, imaged), 'filter' (the transfer applied to every object) and
        'noise_sd' (the noise's standard deviation per coefficient; 0 where no noise
        is, e.g. in the missing wedge) and 'snr' (B,): enough for the exact likelihood of a volume
        under any hypothesis (benchmarks/bench_ceiling.py's ideal observers)."""
        b, n = spec.shape[0], self.n
        s = p['scheme']
        ice = torch.zeros_like(spec)
        ice[:, self.ice_idx] = p['ice_z'] * self.ice_col * p['ice'].unsqueeze(1)
        spec += hermitian_planes(ice.view(b, n, n, n // 2 + 1), n).view(b, -1)   # a real field
        ctf = torch.addcmul(self.chi0, self.chi1, torch.gather(p['defocus'], 1, self.tilt[s])).sin_()
        ctf = torch.where(p['flip'].unsqueeze(1), ctf.abs(), ctf)
        env = torch.addcmul(p['bfactor'].unsqueeze(1) * self.k2_4, p['dose'].unsqueeze(1), self.doseq[s])
        band = (self.kcube <= p['band'].unsqueeze(1)).float()
        h = env.neg_().exp_().mul_(ctf).mul_(self.wedge_signed[s]).mul_(band)
        var_p = self.variance(pspec * h) * ref_scale
        noise = hermitian_planes(p['noise'], n).reshape(b, -1)
        colour = torch.mul(p['alpha'].unsqueeze(1), self.logk).exp_().mul_(self.wedge_nodc[s]).mul_(band)
        noise = noise * colour
        gain = torch.sqrt(var_p / (p['snr'] * self.variance(noise).clamp_min(1e-30)))
        clean = spec * h
        total = noise.mul_(gain.unsqueeze(1)).add_(clean)
        if spectra is not None:
            spectra.update(observed=total.clone(), clean=clean.clone(), particle=pspec * h,
                           filter=h.clone(), noise_sd=colour * gain.unsqueeze(1), snr=p['snr'].clone())
        if self.cfg.normalise:      # zero mean (no DC), unit variance (Parseval): exact
            total[:, 0] = 0
            clean[:, 0] = 0
            inv = self.variance(total).clamp_min(1e-30).rsqrt().unsqueeze(1)
            total.mul_(inv)
            clean.mul_(inv)
        shape = (b, n, n, n // 2 + 1)
        vol = torch.fft.irfftn(total.view(shape), s=(n, n, n), dim=(1, 2, 3))
        if not return_clean:
            return vol
        return vol, torch.fft.irfftn(clean.view(shape), s=(n, n, n), dim=(1, 2, 3))
