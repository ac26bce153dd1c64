"""Cross-simulator check: subtomograms made WITHOUT our data model, by an explicit
tilt series -- rotate the map (scipy), project along the beam at each tilt (-60..60,
step 3, tilt axis y), 2D CTF (300 kV, 3 um underfocus, amplitude contrast 0.07),
Poisson counting noise at a given dose, ramp-filtered (weighted) back-projection --
then embedded with the shipped model (contrast told from the data) and k-means'd.
The 13 SHREC classes + negative (an empty box), 20 each. This is the kind of
synthetic-to-real gap held-out data will show: nothing here shares code with
core/simulate.py or core/imaging.py.

``--context`` makes it a cellular scene: defocus drawn per subtomogram (2-5 um),
half of the particles crowded by 1-3 random SHREC neighbours (0-6 nm apart), a
fifth of them next to a flat lipid bilayer (two leaflets 4 nm apart, 2-15 nm
away); negatives get the same context around an empty centre.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from bench_quality import SHREC, structures_root                     # noqa: E402
from deepcluster.core import cluster, evaluation                     # noqa: E402
from deepcluster.core.embed import Embedder, embed_arrays, resolve_contrast  # noqa: E402
from deepcluster.core.network import model_sha256                            # noqa: E402
from deepcluster.core.volumes import fit_box, pad_to_cube, read_volume, resample, write_volume  # noqa: E402



def random_rotation(rng):
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def place(density, rng, pad):
    """The map in a pad^3 box, randomly rotated about its centre, shifted <= 1 voxel."""
    vol = fit_box(density / density.max(), pad, fill=0.0)
    R = random_rotation(rng)
    c = (pad - 1) / 2.0
    offset = c - R @ (np.full(3, c) + rng.uniform(-1, 1, 3))
    return ndimage.affine_transform(vol, R, offset=offset, order=1)


def extent(density, voxel):
    """Radius (A) holding the density above 5 % of its maximum."""
    idx = np.argwhere(density > 0.05 * density.max()) - (np.array(density.shape) - 1) / 2.0
    return float(np.sqrt((idx ** 2).sum(1)).max()) * voxel


def add_context(vol, rng, maps, radius, voxel):
    """Neighbours (p = 0.5) and a bilayer (p = 0.2) around the centre particle of
    radius ``radius`` (A); ``maps``: (density, radius) of the possible neighbours."""
    pad = vol.shape[0]
    if rng.random() < 0.5:
        for _ in range(rng.integers(1, 4)):
            dens, r = maps[rng.integers(len(maps))]
            d = rng.normal(size=3)
            dist = (radius + r + rng.uniform(0, 60.0)) / voxel
            vol += ndimage.shift(place(dens, rng, pad), d / np.linalg.norm(d) * dist, order=1)
    if rng.random() < 0.2:
        nrm = rng.normal(size=3)
        nrm /= np.linalg.norm(nrm)
        ax = np.arange(pad) - (pad - 1) / 2.0
        z, y, x = np.meshgrid(ax, ax, ax, indexing='ij')
        dist = (z * nrm[0] + y * nrm[1] + x * nrm[2]) * voxel - (radius + 20.0 + rng.uniform(20.0, 150.0))
        vol += 0.6 * (np.exp(-(dist - 20.0) ** 2 / (2 * 8.0 ** 2)) + np.exp(-(dist + 20.0) ** 2 / (2 * 8.0 ** 2)))
    return vol


def ctf_2d(n, voxel, defocus_a=30000.0, kv=300.0, cs_mm=2.7, amp=0.07):
    lam = 12.2643 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    f = np.fft.fftfreq(n, d=voxel)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    chi = math.pi * lam * defocus_a * k2 - 0.5 * math.pi * cs_mm * 1e7 * lam ** 3 * k2 ** 2
    return -np.sin(chi + math.asin(amp))


def tilt_series_subtomogram(vol, rng, angles, dose_per_tilt, voxel, box, contrast=0.1, defocus_a=30000.0):
    """Project at each tilt (beam z, axis y), CTF, Poisson, ramp filter, back-project."""
    n = vol.shape[0]
    ctf = ctf_2d(n, voxel, defocus_a)
    ramp = np.abs(np.fft.fftfreq(n))[None, :] * 2 + 1.0 / n
    recon = np.zeros_like(vol)
    for a in angles:
        rot = ndimage.rotate(vol, a, axes=(0, 2), reshape=False, order=1)      # (z, y, x): about y
        proj = rot.sum(axis=0)                                                 # along the beam
        phase = np.real(np.fft.ifft2(np.fft.fft2(proj) * ctf))
        counts = rng.poisson(dose_per_tilt * np.clip(1 + contrast * phase, 0, None))
        img = counts / dose_per_tilt - 1.0
        img = np.real(np.fft.ifft(np.fft.fft(img, axis=1) * ramp, axis=1))      # weighting
        smear = np.broadcast_to(img, vol.shape)
        recon += ndimage.rotate(smear, -a, axes=(0, 2), reshape=False, order=1)
    return fit_box(recon, box)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=None)
    ap.add_argument('--n-per-class', type=int, default=20)
    ap.add_argument('--dose', type=float, default=12000.0,
                    help='electrons per 10x10 A^2 over the series (default: 120 e/A^2)')
    ap.add_argument('--seed', type=int, default=99)
    ap.add_argument('--voxel-size', type=float, default=10.0,
                    help='voxel size of the tilt series (the box keeps ~40 nm; embed resamples)')
    ap.add_argument('--contrast', type=float, default=0.1,
                    help='image contrast per voxel of protein along the beam (0.1; physically ~0.02-0.04 '
                         'at 10 A: 0.00065 rad/(V A) x ~2.7 V protein-ice x 10 A, x up to 2 for the CTF)')
    ap.add_argument('--context', action='store_true',
                    help='a cellular scene: crowding, membranes, defocus 2-5 um (see above)')
    ap.add_argument('--save', default=None, help='also write the subtomograms (.mrc) here')
    ap.add_argument('--out', default=None, help='JSON (default results/bench_physical[_VOXEL].json)')
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    voxel = a.voxel_size
    a.out = a.out or os.path.join(HERE, 'results', 'bench_physical%s%s.json'
                                  % ('_context' if a.context else '', '' if voxel == 10.0 else '_%g' % voxel))
    box = int(round(400.0 / voxel))
    pad = int(round(640.0 / voxel))
    angles = np.arange(-60, 61, 3.0)
    maps = os.path.join(structures_root(), 'maps_10A')
    t0 = time.time()
    vols, truth = [], []
    densities = {}
    for name in SHREC:
        density = read_volume(os.path.join(maps, name + '.mrc'))[0]
        densities[name] = density if voxel == 10.0 else resample(pad_to_cube(density), 10.0, voxel)[0]
    radii = {name: extent(d, voxel) for name, d in densities.items()}
    neighbours = [(densities[name], radii[name]) for name in SHREC]
    for name in SHREC + ['negative']:
        density = densities.get(name)
        for _ in range(a.n_per_class):
            v = np.zeros((pad,) * 3, np.float32) if density is None else place(density, rng, pad)
            defocus = 30000.0
            if a.context:
                v = add_context(v, rng, neighbours, radii.get(name, 50.0), voxel)
                defocus = rng.uniform(20000.0, 50000.0)
            # dose per pixel and tilt: 120 e/A^2 over the series
            vols.append(tilt_series_subtomogram(v, rng, angles, a.dose * (voxel / 10.0) ** 2 / len(angles),
                                                voxel, box, contrast=a.contrast, defocus_a=defocus))
            truth.append(name)
    t_sim = time.time() - t0
    vols = np.stack(vols).astype(np.float32)
    if a.save:
        os.makedirs(a.save, exist_ok=True)
        for i, v in enumerate(vols):
            write_volume(os.path.join(a.save, 'phys_%04d.mrc' % i), v, voxel)
    emb = Embedder.from_file(a.model)
    invert = False
    if a.save:
        invert = resolve_contrast('auto', [os.path.join(a.save, 'phys_%04d.mrc' % i) for i in range(len(vols))],
                                  emb.config)
    X = embed_arrays(vols, emb, emb.config, voxel_size=voxel, invert_contrast=invert)
    truth = np.array(truth)
    res = {'model': a.model or 'shipped default', 'model_sha256': model_sha256(a.model),
           'n': len(truth), 'k': 14, 'voxel_size': voxel, 'box': box, 'context': bool(a.context),
           'dose_e_per_A2': a.dose / 100.0, 'contrast': a.contrast, 'tilts': '-60..60 step 3',
           'simulation_seconds': round(t_sim, 1), 'inverted': bool(invert)}
    for k in (14,):
        lab, _, _ = cluster.cluster_features(X, k, seed=0, scores=False)
        ev = evaluation.evaluate(truth, lab)
        res.update({m: round(ev[m], 4) for m in ('v_measure', 'homogeneity', 'completeness', 'ari')})
        res['contingency'] = ev['contingency']
    print('physical tilt-series test: V-measure %.3f (homogeneity %.3f, completeness %.3f), n=%d'
          % (res['v_measure'], res['homogeneity'], res['completeness'], res['n']))
    with open(a.out + '.tmp', 'w') as f:
        json.dump(res, f, indent=1)
    os.replace(a.out + '.tmp', a.out)


if __name__ == '__main__':
    main()
