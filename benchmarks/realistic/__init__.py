"""An independent physical benchmark: labelled subtomograms cut from simulated
cellular tomograms, written from the physics of cryo-ET and sharing no code with
deepcluster.core (it imports nothing from it; bench_realistic.py calls the
model through deepcluster.core.inference only to embed).

    from benchmarks.realistic import make_set, score
    s = make_set('paper', 1)                 # dict(volumes [N,40,40,40] float32, labels, voxel_size, info)
    metrics = score(features, s['labels'], 'paper')

Modules, one job each:
  templates.py    structures -> densities (maps / PDB via gemmi), mass-scaled
  ribosome.py     where a ribosome binds the membrane (its LSU tunnel exit)
  specimen.py     the crowded slab: complexes, bilayers, bound ribosomes
  tiltseries.py   tilt series: CTF per layer and strip, damage, attenuation, Poisson, misalignment
  reconstruct.py  weighted back-projection, extraction at any voxel size
  sets.py         the kinds of sets ('paper', 'unseen', 'rare'), tomogram by tomogram, cache
  metrics.py      k-means V/h/c over k, contingency, linear probe, rare-class F1, mb vs cytosolic,
                  the handcrafted 20-number reference descriptor
Seeds: 1 and 2 are the reported ones; use a validation seed (>= 100) for any
choice you make with these sets. Sets are cached under runs/realistic/
(<kind>_<seed>_<voxel>.npz); one set (5 tomograms) takes ~3 min on 2 idle CPU cores
(~35 s a tomogram), 9-15 min on a loaded machine (measured: 520-920 s at load 10-16).
"""
import json
import os

import numpy as np

from . import metrics, sets

KINDS = tuple(sets.KINDS)
REPORTED_SEEDS = (1, 2)
VALIDATION_SEED = 100


def make_set(kind, seed, voxel_size=13.68, box=40, log=print):
    """The labelled subtomograms of one set (cached to runs/realistic/<kind>_<seed>_<voxel>.npz).
    Simulating a set writes all of sets.VOXELS (and ``voxel_size``) from the same tomograms."""
    path = sets.cache_path(kind, seed, voxel_size, box)
    if os.path.exists(path):
        with np.load(path) as d:
            info = json.loads(str(d['info']))
            if info.get('version') == sets.VERSION:
                return {'volumes': d['volumes'], 'labels': [str(x) for x in d['labels']],
                        'voxel_size': float(d['voxel_size']), 'info': info}
        log('%s: made by an older simulator version, remaking' % path)
    voxels = tuple(sorted(set(sets.VOXELS) | {float(voxel_size)}))
    if box != 40:
        voxels = (float(voxel_size),)
    res = sets.generate(kind, seed, voxels, box, log)
    return res[float(voxel_size)]


def score(features, labels, kind=None, seed=0):
    """Clustering / probe / rare-class / membrane-binding metrics of features (N, d)."""
    return metrics.score(features, labels, kind, seed)


handcrafted = metrics.handcrafted
