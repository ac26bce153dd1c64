"""Cross-simulator check: subtomograms made WITHOUT our data model, by an explicit
tilt series -- rotate the map (scipy), project along the beam at each tilt (-60..60,
step 3, tilt axis y), 2D CTF (300 kV, 3 um underfocus, amplitude contrast 0.07),
Poisson counting noise at a given dose, ramp-filtered (weighted) back-projection --
then embedded with the shipped model (contrast told from the data) and k-means'd.
The 13 SHREC classes + negative (an empty box), 20 each. This is the kind of
synthetic-to-real gap held-out data will show: nothing here shares code with
core/datamodel/simulate.py or core/datamodel/imaging.py.

The same specimen at every ``--voxel-size``: the dose is per A^2, the contrast per
10 A of protein and the picking error up to 10 A per axis, so between voxel sizes
only the sampling differs.

``--context`` makes it a cellular scene: defocus drawn per subtomogram (2-5 um),
half of the particles crowded by 1-3 random SHREC neighbours (0-6 nm apart), a
fifth of them next to a flat lipid bilayer (two leaflets 4 nm apart, 2-15 nm
away); negatives get the same context around an empty centre.

``--classes`` and ``--membrane-bound`` test other species: ``--membrane-bound X``
adds a class ``X_mb``, X on a bilayer that touches its map's -z side (the pose
the data model uses for its ``_mb`` classes: the maps do not say where a ribosome
binds the membrane; ``--mb-side random``: a random side per particle, a binding
site the model never saw). ``--paper-real`` is the paper's real-data test (its section
4.1: *C. reinhardtii*, 13.68 A/voxel, 4-5 um underfocus, 100 each of cytosolic
and membrane-bound ribosomes, 26S proteasomes, rubisco and negatives) made by
this simulator: 80S ribosome 4v7r, proteasome 4cr2, rubisco 1bxn as its L8S8
assembly (from pdb/1bxn.pdb; the model was trained on the half complex of
1bxn.mrc), in the cellular scene at the contrast of protein in ice.
Besides V-measure at k = the number of classes, it reports V-measure,
homogeneity and completeness for each k (the paper's figure 3D: 0.76 at k = 3,
its best) and the k that ``--k auto`` chooses.
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

from bench_quality import SHREC, score, structures_root             # noqa: E402
from deepcluster.core.datamodel.structures import template_from_model          # noqa: E402
from deepcluster.core.inference.embed import Embedder, resolve_contrast        # noqa: E402
from deepcluster.core.model.network import model_sha256                            # noqa: E402
from deepcluster.core.inference.volumes import (atomic_path, fit_box, pad_to_cube, read_volume, resample,  # noqa: E402
                                      write_volume)



PICK_ERROR = 10.0       # A per axis, at any voxel size: only the sampling differs between voxel sizes


def random_rotation(rng):
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def place(density, rng, pad, with_rotation=False, max_shift=1.0):
    """The map in a pad^3 box, randomly rotated about its centre, shifted <= max_shift
    voxels per axis (and the rotation R: a map direction d points along R.T @ d in the box)."""
    vol = fit_box(density / density.max(), pad, fill=0.0)
    R = random_rotation(rng)
    c = (pad - 1) / 2.0
    offset = c - R @ (np.full(3, c) + rng.uniform(-1, 1, 3) * max_shift)
    out = ndimage.affine_transform(vol, R, offset=offset, order=1)
    return (out, R) if with_rotation else out


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def load_density(name, root, voxel):
    """A species' density at ``voxel`` A: a map in maps_10A/ by name, or an atomic model
    (path under ``root``) as its biological assembly."""
    if name.endswith(('.pdb', '.cif')):
        return template_from_model(os.path.join(root, name), voxel).density
    density = read_volume(os.path.join(root, 'maps_10A', name + '.mrc'))[0]
    return density if voxel == 10.0 else resample(pad_to_cube(density), 10.0, voxel)[0]


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
        add_bilayer(vol, nrm / np.linalg.norm(nrm), radius + 20.0 + rng.uniform(20.0, 150.0), voxel)
    return vol


def add_bilayer(vol, normal, distance, voxel):
    """A flat bilayer (two leaflets 4 nm apart) whose mid-plane is ``distance`` A from
    the box centre along the unit ``normal`` (z, y, x)."""
    ax = np.arange(vol.shape[0]) - (vol.shape[0] - 1) / 2.0
    z, y, x = np.meshgrid(ax, ax, ax, indexing='ij')
    dist = (z * normal[0] + y * normal[1] + x * normal[2]) * voxel - distance
    vol += 0.6 * (np.exp(-(dist - 20.0) ** 2 / (2 * 8.0 ** 2)) + np.exp(-(dist + 20.0) ** 2 / (2 * 8.0 ** 2)))


def reach(density, voxel, direction):
    """How far (A) the density above 5 % of its maximum reaches from the map centre
    along the unit ``direction`` (z, y, x)."""
    idx = np.argwhere(density > 0.05 * density.max()) - (np.array(density.shape) - 1) / 2.0
    return float((idx @ direction).max()) * voxel


def ctf_2d(n, voxel, defocus_a=30000.0, kv=300.0, cs_mm=2.7, amp=0.07):
    lam = 12.2643 / math.sqrt(kv * 1e3 * (1 + 0.978466e-6 * kv * 1e3))
    f = np.fft.fftfreq(n, d=voxel)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    chi = math.pi * lam * defocus_a * k2 - 0.5 * math.pi * cs_mm * 1e7 * lam ** 3 * k2 ** 2
    return -np.sin(chi + math.asin(amp))


def tilt_series_subtomogram(vol, rng, angles, dose_per_tilt, voxel, box, contrast=0.1, defocus_a=30000.0):
    """Project at each tilt (beam z, axis y), CTF, Poisson, ramp filter, back-project.

    ``contrast``: per 10 A of protein along the beam, so that a particle's phase
    shift, like the dose per A^2, does not depend on the voxel size."""
    n = vol.shape[0]
    ctf = ctf_2d(n, voxel, defocus_a)
    ramp = np.abs(np.fft.fftfreq(n))[None, :] * 2 + 1.0 / n
    recon = np.zeros_like(vol)
    for a in angles:
        rot = ndimage.rotate(vol, a, axes=(0, 2), reshape=False, order=1)      # (z, y, x): about y
        proj = rot.sum(axis=0) * (voxel / 10.0)                                # along the beam, per 10 A
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
                    help='image contrast per 10 A of protein along the beam, at any voxel size (0.1; '
                         'physically ~0.02-0.04: 0.00065 rad/(V A) x ~2.7 V protein-ice x 10 A, x up to 2 '
                         'for the CTF)')
    ap.add_argument('--context', action='store_true',
                    help='a cellular scene: crowding, membranes, defocus 2-5 um (see above)')
    ap.add_argument('--classes', nargs='+', default=SHREC,
                    help='species: names of maps in maps_10A/ or .pdb/.cif paths under the structures '
                         'folder (default: the 13 SHREC classes); a negative class is always added')
    ap.add_argument('--membrane-bound', nargs='*', default=[],
                    help='also these species on a membrane, as classes NAME_mb (see above)')
    ap.add_argument('--mb-side', choices=('map-z', 'random'), default='map-z',
                    help="the side of a membrane-bound particle that touches the membrane: the map's -z "
                         "(the data model's pose) or a random one per particle (a binding site the "
                         "model was not trained with)")
    ap.add_argument('--paper-real', action='store_true',
                    help="the paper's real-data test made by this simulator (see above; sets the "
                         "classes, 100 per class, 13.68 A, context, contrast 0.03, 4-5 um underfocus)")
    ap.add_argument('--plots', default=None, help='also write the clustering report (t-SNE, contingency, '
                    'metrics vs k) here (default for --paper-real: results/paper_real)')
    ap.add_argument('--save', default=None, help='also write the subtomograms (.mrc) here')
    ap.add_argument('--out', default=None, help='JSON (default RESULTS/bench_physical[_VOXEL].json)')
    ap.add_argument('--results', default=os.path.join(HERE, 'results'),
                    help='folder of the default --out and --plots (another shipped model\'s: results/NAME)')
    argv = sys.argv[1:] if argv is None else argv
    if '--paper-real' in argv:      # defaults: explicit flags still win
        ap.set_defaults(classes=['4v7r', '4cr2', 'pdb/1bxn.pdb'], membrane_bound=['4v7r'], n_per_class=100,
                        voxel_size=13.68, context=True, contrast=0.03)
    a = ap.parse_args(argv)
    mb_random = '_mb_random' if a.mb_side == 'random' else ''
    if a.paper_real and a.plots is None:
        a.plots = os.path.join(a.results, 'paper_real' + mb_random)
    defocus_range = (40000.0, 50000.0) if a.paper_real else (20000.0, 50000.0)
    rng = np.random.default_rng(a.seed)
    voxel = a.voxel_size
    a.out = a.out or os.path.join(a.results, 'bench_physical%s%s%s.json'
                                  % ('_paper_real' if a.paper_real else '_context' if a.context else '',
                                     '' if voxel == 10.0 or a.paper_real else '_%g' % voxel,
                                     mb_random))
    box = int(round(400.0 / voxel))
    pad = int(round(640.0 / voxel))
    angles = np.arange(-60, 61, 3.0)
    root = structures_root()
    t0 = time.time()
    vols, truth = [], []
    crowd = {name: load_density(name, root, voxel) for name in SHREC}
    densities = {_stem(c): crowd[c] if c in crowd else load_density(c, root, voxel) for c in a.classes}
    names = list(densities)
    unknown = sorted(set(a.membrane_bound) - set(names))
    if unknown:
        raise SystemExit('--membrane-bound %s: not among --classes %s' % (' '.join(unknown), ' '.join(names)))
    radii = {name: extent(d, voxel) for name, d in densities.items()}
    neighbours = [(d, extent(d, voxel)) for d in crowd.values()]
    classes = [(n, False) for n in names] + [(n, True) for n in a.membrane_bound] + [('negative', False)]
    for name, bound in classes:
        density = densities.get(name)
        for _ in range(a.n_per_class):
            if density is None:
                v = np.zeros((pad,) * 3, np.float32)
            else:
                v, R = place(density, rng, pad, with_rotation=True, max_shift=PICK_ERROR / voxel)
            if bound:                       # that side of the map on the bilayer's near leaflet
                side = np.array([-1.0, 0.0, 0.0]) if a.mb_side == 'map-z' else rng.normal(size=3)
                side /= np.linalg.norm(side)
                add_bilayer(v, R.T @ side, reach(density, voxel, side) + 20.0 + rng.uniform(0.0, 10.0), voxel)
            defocus = 30000.0
            if a.context:
                v = add_context(v, rng, neighbours, radii.get(name, 50.0), voxel)
                defocus = rng.uniform(*defocus_range)
            # dose per pixel and tilt: 120 e/A^2 over the series
            vols.append(tilt_series_subtomogram(v, rng, angles, a.dose * (voxel / 10.0) ** 2 / len(angles),
                                                voxel, box, contrast=a.contrast, defocus_a=defocus))
            truth.append(name + '_mb' if bound else name)
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
    truth = np.array(truth)
    res = {'model': a.model or 'shipped default', 'model_sha256': model_sha256(a.model),
           'classes': [c + '_mb' if bound else c for c, bound in classes], 'mb_side': a.mb_side,
           'voxel_size': voxel, 'box': box, 'context': bool(a.context),
           'defocus_um': [d / 1e4 for d in defocus_range] if a.context else 3.0,
           'dose_e_per_A2': a.dose / 100.0, 'contrast': a.contrast, 'tilts': '-60..60 step 3',
           'simulation_seconds': round(t_sim, 1), 'inverted': bool(invert)}
    # k-means at k = the number of classes, V-measure for each k (the paper's figure 3D),
    # at the k that --k auto picks, and the model's own classifier
    res.update(score(emb, vols, truth, voxel, 0, plots_dir=a.plots, invert_contrast=invert, sweep_k=True))
    print('physical tilt-series test: V-measure %.3f (homogeneity %.3f, completeness %.3f), n=%d; '
          'best k=%d (V-measure %.3f); auto k=%d (V-measure %.3f); the model\'s classifier: %s'
          % (res['v_measure'], res['homogeneity'], res['completeness'], res['n'], res['best_k']['k'],
             res['best_k']['v_measure'], res['auto_k']['k'], res['auto_k']['v_measure'],
             res.get('supervised_classifier')))
    with atomic_path(a.out) as tmp, open(tmp, 'w') as f:     # creates the folder too
        json.dump(res, f, indent=1)


if __name__ == '__main__':
    main()
