"""Simulated data sets on disk (the data model is in simulate.py): .mrc files +
labels.csv + a montage, written atomically."""
import logging
import os
import time

import numpy as np
import torch

from deepcluster.core import DeepClusterError
from deepcluster.core.datamodel.simulate import Simulator
from deepcluster.core.datamodel.tomograms import (TomogramLayout, TomogramWriter, pose_matrices,
                                                  write_particles)
from deepcluster.core.inference.volumes import write_labels, write_volume
from deepcluster.core.outputs import atomic_path, check_finite, claim_output, output_folder

log = logging.getLogger(__name__)


def write_montage(path, volumes_by_class, per_class=4):
    """PNG: one row per class, ``per_class`` examples, each as its central XY slice
    and central XZ slice (where the missing wedge smears along Z); each slice is
    averaged with its two neighbours, as in the method paper's figures, and
    contrast-stretched on its own (1-99 percentiles). One mosaic image, so it is
    quick for any number of classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    names = list(volumes_by_class)
    first = next((np.asarray(v[0]) for v in volumes_by_class.values() if len(v)), None)
    if first is None:
        raise DeepClusterError('montage: no volumes to show')
    n, gap = first.shape[0], 2
    tile = n + gap
    mosaic = np.ones((len(names) * tile, 2 * per_class * tile + gap), np.float32)
    for r, name in enumerate(names):
        for i, v in enumerate(list(volumes_by_class[name])[:per_class]):
            v = np.asarray(v, dtype=np.float32)
            c = n // 2
            for j, img in enumerate((v[c - 1:c + 2].mean(0), v[:, c - 1:c + 2].mean(1))):
                lo, hi = np.percentile(img, [1, 99])
                y, x = r * tile, (2 * i + j) * tile
                mosaic[y:y + n, x:x + n] = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)[::-1]
    h, w = mosaic.shape
    scale = max(2.0, 600.0 / w)
    fig = Figure(figsize=((w * scale) / 100 + 1.4, (h * scale) / 100 + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([1.3 / fig.get_figwidth(), 0.05 / fig.get_figheight(),
                       (w * scale / 100) / fig.get_figwidth(), (h * scale / 100) / fig.get_figheight()])
    ax.imshow(mosaic, cmap='gray', vmin=0, vmax=1, interpolation='nearest')
    ax.set_axis_off()
    for r, name in enumerate(names):
        ax.text(-gap * 2, r * tile + n / 2, name, ha='right', va='center', fontsize=8)
    for i in range(2 * per_class):
        ax.text(i * tile + n / 2, -1, ('XY', 'XZ')[i % 2], ha='center', va='bottom', fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png')
    return path


def simulate_to_folder(out, templates, n_per_class, config=None, seed=0, negative=True,
                       membrane_bound=(), device='cpu', batch_size=64, montage=True,
                       tomograms=None):
    """Write ``n_per_class`` subtomograms per class to the folder ``out``:
    ``sub_000000.mrc``... (voxel size in the header; classes interleaved),
    ``labels.csv`` (file,label = class name), ``montage.png`` and
    ``templates/<class>.mrc`` (each structure as simulated: the record of what
    the labels mean), ``particles.csv`` (each file's true pose, Scipion's
    convention: ``tomograms.py``) and, given ``tomograms`` = (particles per
    tomogram, binning), ``tomograms/tomo_NNN.mrc`` with the particles placed in
    them and their coordinates in particles.csv. The folder
    appears atomically (nothing on error). Same seed (and batch size, device)
    -> byte-identical volumes. Returns a summary dict."""
    if int(n_per_class) < 1:
        raise DeepClusterError('n-per-class %s: must be at least 1' % n_per_class)
    out = claim_output(out, 'simulate', ours=is_simulated_folder, folder=True)
    sim = Simulator(templates, config, device, negative, membrane_bound)
    cfg, names = sim.config, sim.class_names
    total = len(names) * int(n_per_class)
    labels = torch.arange(total) % len(names)
    gen = torch.Generator(device=sim.device).manual_seed(int(seed))
    files, examples, poses = [], {nm: [] for nm in names}, []
    layout = TomogramLayout(total, cfg.box, cfg.voxel_size, *tomograms) if tomograms else None
    t0 = last = time.time()
    with output_folder(out, 'simulate') as tmp:
        placer = TomogramWriter(layout, os.path.join(tmp, 'tomograms')) if layout else None
        for start in range(0, total, batch_size):
            lab = labels[start:start + batch_size]
            vols = check_finite(sim.batch(lab.to(sim.device), gen).cpu().numpy(),
                                'simulate (check --snr and the structures)')
            rot, shift = sim.last_poses
            poses.append(pose_matrices(rot.cpu().numpy(), shift.cpu().numpy()))
            for i, (v, c) in enumerate(zip(vols, lab.tolist())):
                fn = 'sub_%06d.mrc' % (start + i)
                write_volume(os.path.join(tmp, fn), v, cfg.voxel_size, atomic=False)   # the folder is atomic
                files.append(fn)
                if placer:
                    placer.add(start + i, v)
                if len(examples[names[c]]) < 4:
                    examples[names[c]].append(v)
            done = start + len(lab)
            if time.time() - last > 5 or done == total:
                rate = done / max(time.time() - t0, 1e-9)
                log.info('simulate: %d/%d subtomograms, %.0f/s, ETA %.0f s', done, total, rate,
                         (total - done) / rate)
                last = time.time()
        write_labels(os.path.join(tmp, 'labels.csv'), files, [names[c] for c in labels.tolist()])
        if placer:
            placer.close()
        write_particles(os.path.join(tmp, 'particles.csv'), files, np.concatenate(poses), layout)
        os.makedirs(os.path.join(tmp, 'templates'))
        for t in templates:
            write_volume(os.path.join(tmp, 'templates', t.name + '.mrc'), t.density, t.voxel_size,
                         atomic=False)
        if montage:
            write_montage(os.path.join(tmp, 'montage.png'), examples)
    return dict(out=os.path.abspath(out), n=total, classes=names, seconds=time.time() - t0,
                tomograms=layout.n_tomograms if layout else 0)


def is_simulated_folder(path):
    """A simulate output from before outputs were stamped: labels.csv, templates/,
    montage.png and sub_*.mrc only."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return 'labels.csv' in names and all(
        n in ('labels.csv', 'templates', 'montage.png', 'tomograms', 'particles.csv') or (n.startswith('sub_') and n.endswith('.mrc'))
        for n in names)
