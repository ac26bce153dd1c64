"""Labelled subtomogram sets as users meet them, made tomogram by tomogram.

kinds:
- 'paper': the method paper's real-data classes (its section 4.1, C. reinhardtii):
  membrane-bound 80S ribosome (4v7r at its tunnel exit on a membrane), cytosolic
  80S ribosome (4v7r), 26S proteasome (4cr2), rubisco (L8S8 from pdb/1bxn.pdb
  BIOMT), negative (crowded cytosol, a third of them near a membrane); 100 each.
- 'unseen': five complexes none of the shipped models saw (0.5-2.5 MDa), from
  PDB entries of other complexes (see UNSEEN), + negative; 80 each.
- 'rare': 10 p97/VCP (3cf3 BIOMT hexamer, ~0.45 MDa; a SHREC training structure,
  as a user's rare class may well be) among 600 with ribosome, 26S proteasome,
  rubisco and negative (1.7 %).
Every tomogram (175 x 175 nm, 130-170 nm thick, 9.12 A grid): a crowded slab
(complexes at a target 10-30 % volume fraction; random packing reaches 10-22 %,
recorded per tomogram; crowders = eight smaller SHREC complexes from their PDB
files), 1-3 membranes, 30 % of the particles of every class (and of the negatives)
placed 2-20 nm (negatives 8-25 nm) from a membrane without being bound.
The labels of the picks are the complexes centred in them; neighbours, crowders
and membranes cut by the box are context, as in a real tomogram.
"""
import os
import time

import numpy as np
import torch

from . import reconstruct, specimen, templates, tiltseries
from .ribosome import ribosome_exit

TOMO_XY = 192                       # fine px (175 nm at 9.12 A)
SOURCE_REPO = 'archie18/schuellerlab'
SOURCE_COMMIT = '1626f4c9b8a0a5a2fa929b1cdd570308cb5f8ff7'
# five complexes the shipped models never saw: deposited PDB entries of complexes
# unrelated to the training structures, fetched from a public repository (a
# binding-site benchmark that keeps whole PDB entries; header records stripped,
# so no BIOMT), and three compact clash-free assemblies built from them by
# symmetry (the interfaces are made up; the shapes are new, the chains real).
UNSEEN = {
    'u1OJD': ('1OJD', None),                  # 10-chain asymmetric unit, ~0.53 MDa
    'u2C37': ('2C37', None),                  # 24-chain asymmetric unit, ~0.62 MDa
    'u1A49x2': ('1A49', 'C2'),                # pyruvate kinase 8-mer x 2, ~0.84 MDa
    'u1O04x3': ('1O04', 'C3'),                # 8-chain unit x 3, ~1.2 MDa
    'u2C37x4': ('2C37', 'T4'),                # 4 copies at tetrahedron vertices, ~2.5 MDa
}
CROWDERS = ['1s3x', '3qm1', '3gl1', '3h84', '2cg9', '3d2f', '1u6g', '1qvr']
KINDS = {
    'paper': ({'4v7r_mb': 100, '4v7r': 100, '4cr2': 100, '1bxn': 100, 'negative': 100}, 20),
    'unseen': ({**{k: 80 for k in UNSEEN}, 'negative': 80}, 16),
    'rare': ({'3cf3': 10, '4v7r': 148, '4cr2': 148, '1bxn': 147, 'negative': 147}, 30),
}
VOXELS = (13.68, 10.0)
VERSION = 2                 # bump when the simulation changes: older caches are remade
_TEMPLATES = {}


def pdb_dir():
    return os.path.join(templates.CACHE, 'pdb')


def unseen_pdb(code):
    """runs/realistic/pdb/<code>.pdb, copied from the fetched mirror of SOURCE_REPO."""
    path = os.path.join(pdb_dir(), code + '.pdb')
    if os.path.exists(path):
        return path
    import glob
    import subprocess
    mirrors = glob.glob('/work/.mirror/%s/repo' % SOURCE_REPO.replace('/', '+'))
    if not mirrors:
        raise SystemExit('%s not found: fetch github:%s (commit %s) or put the PDB entry there'
                         % (path, SOURCE_REPO, SOURCE_COMMIT))
    listing = subprocess.run(['git', '-C', mirrors[0], 'ls-tree', '-r', SOURCE_COMMIT], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    blob = next(line.split()[2] for line in listing if line.endswith('/%s.pdb' % code))
    os.makedirs(pdb_dir(), exist_ok=True)
    data = subprocess.run(['git', '-C', mirrors[0], 'cat-file', '-p', blob], capture_output=True, check=True).stdout
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)
    return path


def template(name):
    if name in _TEMPLATES:
        return _TEMPLATES[name]
    v = templates.FINE
    root = templates.structures_root()
    exit_rel = exit_dir = None
    base = name[:-3] if name.endswith('_mb') else name
    if base in ('4v7r', '4cr2'):
        d, mass = templates.map_template(base, v)
        if base == '4v7r':
            ex = ribosome_exit()
            exit_rel = np.array(ex['exit_rel_com_A_zyx']) / v
            exit_dir = np.array(ex['direction_zyx'])
    elif name in UNSEEN:
        code, sym = UNSEEN[name]
        path = unseen_pdb(code)
        xyz, z, mass = templates.read_atoms(path, assembly=False)
        if sym:
            ca = templates.ca_atoms(path)
            ops, u = {'C2': (templates.cyclic(2), [1, 0, 0]), 'C3': (templates.cyclic(3), [1, 0, 0]),
                      'T4': (templates.tetrahedral_4(), [1, 1, 1])}[sym]
            xyz, z, mass = templates.symmetric_assembly(xyz, z, mass, ca, ops, u)
        d = templates.atoms_template(xyz, z, mass, v)
        mass /= 1e3
    else:
        xyz, z, mass = templates.read_atoms(os.path.join(root, 'pdb', base + '.pdb'))
        d = templates.atoms_template(xyz, z, mass, v)
        mass /= 1e3
    d = templates.crop_to_content(d)
    t = specimen.Template(name, d, mass, v, exit_rel, exit_dir)
    _TEMPLATES[name] = t
    return t


def tomogram_params(rng):
    slab_nm = rng.uniform(130, 170)
    return {'shape': (int(round(slab_nm * 10 / templates.FINE)), TOMO_XY, TOMO_XY),
            'fraction': float(rng.uniform(0.10, 0.30)),
            'vesicles': [float(rng.uniform(400, 1500)) for _ in range(1 + int(rng.random() < 0.5))],
            'sheet': bool(rng.random() < 0.6),
            'tilt': {'max_tilt': 60.0, 'step': float(rng.choice([2.0, 3.0])), 'dose': float(rng.uniform(100, 120)),
                     'defocus': float(rng.uniform(30000, 50000)), 'bfactor': float(rng.uniform(50, 150)),
                     'tilt_error_deg': 0.2, 'rot_error_deg': 0.3, 'shift_error_a': float(rng.uniform(2, 8)),
                     'ice_a': slab_nm * 10.0},
            'phase_flip': bool(rng.random() < 0.5),
            'scale': float(10 ** rng.uniform(-1, 2)), 'offset': float(rng.uniform(-5, 5))}


def simulate_tomogram(quota, rng, voxels, box, log=print):
    """One tomogram: {label: [subtomograms per voxel size]}, its record."""
    t0 = time.time()
    p = tomogram_params(rng)
    sp = specimen.Specimen(p['shape'], templates.FINE, rng)
    for r in p['vesicles']:
        sp.add_vesicle(r)                    # A (40-150 nm)
    if p['sheet'] or not p['vesicles']:
        sp.add_sheet()
    picks = []
    placed = {}
    for label, n in quota.items():
        if label == 'negative':
            continue
        t = template(label)
        ok = 0
        for i in range(n):
            if label.endswith('_mb'):
                good = sp.place_bound(t, label)
            elif rng.random() < 0.3:
                good = sp.place_near_membrane(t, label) or sp.place_free(t, label)
            else:
                good = sp.place_free(t, label)
            ok += bool(good)
        placed[label] = ok
    crowd = [(template(c), None) for c in CROWDERS]
    crowd = [(t, specimen.crowder_bank(t, rng, 8)) for t, _ in crowd]
    fraction = sp.fill(crowd, p['fraction'])
    for prt in sp.particles:
        if prt['label']:
            picks.append((prt['label'], prt['centre']))
    if quota.get('negative'):
        centres = [c for _, c in picks]
        for i in range(quota['negative']):
            c = sp.negative_centre(centres, 200.0 / templates.FINE, rng.random() < 0.3)
            if c is not None:
                picks.append(('negative', c))
    t1 = time.time()
    stack, records = tiltseries.simulate_tilt_series(sp.vol, templates.FINE, rng, p['tilt'])
    t2 = time.time()
    zr = p['shape'][0] + 80
    tomo = reconstruct.weighted_backprojection(stack, records, templates.FINE, zr, p['shape'][2],
                                               p['phase_flip'], p['tilt']['defocus'])
    # tomogram units: arbitrary per-tomogram scale and offset (std set first, so float32 keeps the detail)
    tomo = (tomo / tomo.std() * p['scale'] + p['offset'] * p['scale']).astype(np.float32)
    t3 = time.time()
    out = {v: [] for v in voxels}
    labels = []
    dz = (zr - 1) / 2.0 - (p['shape'][0] - 1) / 2.0
    for label, c in picks:
        labels.append(label)
        for v in voxels:
            err = rng.normal(0, 0.3 * v / templates.FINE, 3)     # ~0.5 output voxel in 3-D
            out[v].append(reconstruct.extract(tomo, c + [dz, 0, 0] + err, templates.FINE, v, box))
    rec = {'params': p, 'volume_fraction': round(float(fraction), 3), 'placed': placed,
           'n_particles': len(sp.particles), 'n_membranes': len(sp.membranes), 'n_picks': len(picks),
           'seconds': {'specimen': round(t1 - t0, 1), 'tilt_series': round(t2 - t1, 1),
                       'reconstruction': round(t3 - t2, 1), 'extraction': round(time.time() - t3, 1)}}
    log('  tomogram: %d particles (%.0f %% volume), %d membranes, %d picks; %s'
        % (len(sp.particles), 100 * fraction, len(sp.membranes), len(picks), rec['seconds']))
    return labels, out, rec


def cache_path(kind, seed, voxel, box=40):
    return os.path.join(templates.CACHE, '%s_%d_%g%s.npz' % (kind, seed, voxel, '' if box == 40 else '_box%d' % box))


def generate(kind, seed, voxels=VOXELS, box=40, log=print):
    """Simulate a set at several voxel sizes at once (the same tomograms) and cache each."""
    if kind not in KINDS:
        raise ValueError('kind %r: expected one of %s' % (kind, ', '.join(KINDS)))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    totals, per_tomo = KINDS[kind]
    rng = np.random.default_rng([seed, list(KINDS).index(kind)])
    remaining = dict(totals)
    labels, vols, recs = [], {v: [] for v in voxels}, []
    t0 = time.time()
    while sum(remaining.values()) > 0 and len(recs) < 40:
        n_left = max(1, int(np.ceil(max(remaining.values()) / per_tomo)))
        quota = {k: int(np.ceil(r / n_left)) for k, r in remaining.items() if r > 0}
        lab, out, rec = simulate_tomogram(quota, rng, voxels, box, log)
        for i, l in enumerate(lab):
            if remaining.get(l, 0) > 0:
                remaining[l] -= 1
                labels.append(l)
                for v in voxels:
                    vols[v].append(out[v][i])
        rec['tomogram'] = len(recs)
        recs.append(rec)
    info = {'version': VERSION, 'kind': kind, 'seed': seed, 'box': box, 'n_tomograms': len(recs), 'tomograms': recs,
            'classes': {k: int(sum(1 for l in labels if l == k)) for k in totals},
            'seconds': round(time.time() - t0, 1), 'fine_voxel': templates.FINE,
            'ribosome_exit': ribosome_exit() if any(k.startswith('4v7r') for k in totals) else None}
    res = {}
    for v in voxels:
        arr = np.stack(vols[v]).astype(np.float32)
        path = cache_path(kind, seed, v, box)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path[:-4] + '.tmp.npz'
        np.savez_compressed(tmp, volumes=arr, labels=np.array(labels), voxel_size=v,
                            info=np.array(__import__('json').dumps(info, default=float)))
        os.replace(tmp, path)
        res[v] = {'volumes': arr, 'labels': list(labels), 'voxel_size': float(v), 'info': info}
    log('%s seed %d: %d subtomograms from %d tomograms in %.0f s' % (kind, seed, len(labels), len(recs),
                                                                      time.time() - t0))
    return res
