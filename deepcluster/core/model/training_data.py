"""Where training batches come from: a labelled folder or on-the-fly simulation.

Every batch is a pure function of (seed, step): its labels, files or simulated
volumes and augmentation are drawn from ``step_generator(seed, step)``, so a
resumed run repeats the uninterrupted one exactly and the next batch can be
prepared in a background thread (``Prefetcher``).
"""
import logging
import os
import threading

import numpy as np
import torch

from deepcluster.core import DeepClusterError
from deepcluster.core.inference.embed import prepare_batch, scan_headers
from deepcluster.core.model.network import plain
from deepcluster.core.inference.volumes import read_labels, read_volume

log = logging.getLogger(__name__)


def step_generator(seed, step, device='cpu'):
    """The generator that draws everything random about batch ``step``."""
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))


def balanced_labels(batch, n_classes, gen):
    """Labels with every class floor/ceil(batch / n_classes) times, shuffled."""
    reps = -(-batch // n_classes)
    lab = torch.cat([torch.randperm(n_classes, generator=gen) for _ in range(reps)])[:batch]
    return lab[torch.randperm(batch, generator=gen)]


def random_rot180(x, gen):
    """Rotate each volume of (B, D, D, D) by one of the four 180-degree rotations
    about the box axes (identity included). Proper rotations keep the hand of a
    chiral particle, and each maps the missing wedge (beam z, tilt axis y) onto
    itself, so the augmented data is still physically plausible."""
    k = torch.randint(4, (x.shape[0],), generator=gen)
    for i, dims in ((1, (2, 3)), (2, (1, 3)), (3, (1, 2))):
        m = k == i
        if m.any():
            x[m] = x[m].flip(dims)
    return x


# ================================================================= data sources
class FolderData:
    """Labelled subtomograms from a labels.csv; in memory if small, else streamed."""

    def __init__(self, path, args):
        csv_path = os.path.join(path, 'labels.csv') if os.path.isdir(path) else path
        rows = read_labels(csv_path)
        base = os.path.dirname(os.path.abspath(csv_path))
        files = [f if os.path.isabs(f) else os.path.join(base, f) for f in rows]
        for f in files:
            if not os.path.isfile(f):
                raise DeepClusterError('%s: lists %s, which does not exist' % (csv_path, f))
        labels = list(rows.values())
        self.class_names = sorted(set(labels))
        if len(self.class_names) < 2:
            raise DeepClusterError('%s: needs at least 2 classes, found %s' % (csv_path, self.class_names))
        y = np.array([self.class_names.index(v) for v in labels])
        self.sizes, shapes = scan_headers(files, args.data_voxel_size)
        self.voxel_size = args.voxel_size or float(np.median(self.sizes))
        sides = [round(max(s) * v / self.voxel_size) for s, v in zip(shapes, self.sizes)]
        self.box = args.box or int(np.bincount(sides).argmax())
        self.invert = args.invert_contrast
        self.files = files
        # stratified validation split, seeded
        rng = np.random.default_rng(args.seed)
        tr, va = [], []
        for c in range(len(self.class_names)):
            idx = rng.permutation(np.flatnonzero(y == c))
            nv = int(round(len(idx) * args.val_fraction)) if len(idx) > 1 else 0
            nv = min(max(nv, 1 if args.val_fraction > 0 and len(idx) > 1 else 0), len(idx) - 1)
            va += list(idx[:nv])
            tr += list(idx[nv:])
        self.train_idx, self.val_idx = np.sort(tr), np.sort(va)
        self.y = torch.from_numpy(y)
        self.members = [torch.from_numpy(self.train_idx[y[self.train_idx] == c])
                        for c in range(len(self.class_names))]
        need = len(files) * self.box ** 3 * 4
        self.in_memory = need <= args.max_memory_gb * 2 ** 30
        self.data = self._load(np.arange(len(files))) if self.in_memory else None
        self.augment = args.augment
        self.card = {'source': 'labelled folder', 'labels_csv': os.path.abspath(csv_path),
                     'n_files': len(files), 'n_train': len(tr), 'n_val': len(va),
                     'per_class': {c: int((y == i).sum()) for i, c in enumerate(self.class_names)},
                     'data_voxel_sizes': sorted(set(round(v, 4) for v in self.sizes)),
                     'in_memory': self.in_memory, 'augment': args.augment,
                     'invert_contrast': bool(self.invert)}
        log.info('labelled data %s: %d files, %d classes (%s), %d train / %d validation, '
                 'box %d at %g A/voxel, %s', csv_path, len(files), len(self.class_names),
                 ', '.join('%s %d' % kv for kv in self.card['per_class'].items()), len(tr), len(va),
                 self.box, self.voxel_size, 'in memory' if self.in_memory else 'streamed from disk')

    def _load(self, idx):
        cfg = {'box': self.box, 'voxel_size': self.voxel_size}
        out = torch.empty((len(idx), self.box, self.box, self.box))
        for a in range(0, len(idx), 256):
            part = idx[a:a + 256]
            vols = [read_volume(self.files[i])[0] for i in part]
            out[a:a + len(part)] = prepare_batch(vols, [self.sizes[i] for i in part], cfg, self.invert)
        return out

    def batch(self, step, batch_size, seed):
        g = step_generator(seed, step)
        lab = balanced_labels(batch_size, len(self.class_names), g)
        pick = torch.stack([self.members[c][torch.randint(len(self.members[c]), (1,), generator=g)][0]
                            for c in lab.tolist()])
        x = self.data[pick].clone() if self.in_memory else self._load(pick.numpy())
        if self.augment == 'rot180':
            x = random_rot180(x, g)
        return x, self.y[pick]

    def val_batches(self, batch_size):
        for a in range(0, len(self.val_idx), batch_size):
            part = self.val_idx[a:a + batch_size]
            x = self.data[torch.from_numpy(part)] if self.in_memory else self._load(part)
            yield x, self.y[torch.from_numpy(part)]


class SimulatedData:
    """Fresh simulated subtomograms every step; a fixed validation set made once."""

    def __init__(self, args, device):
        if not args.structures and not args.procedural:
            raise DeepClusterError('no training data: give --data FOLDER, or --structures and/or '
                                   '--procedural N')
        from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator
        from deepcluster.core.datamodel.structures import templates_for
        import dataclasses
        templates = templates_for(args.structures, args.procedural, args.voxel_size, args.seed,
                                  args.embedded)
        if not templates:
            raise DeepClusterError('no training data: give --data FOLDER, or --structures and/or '
                                   '--procedural N')
        want = {'box': args.box, 'voxel_size': args.voxel_size,
                'bandlimit_probability': args.bandlimit_probability}
        if args.snr:
            want['snr'] = tuple(args.snr)
        if args.max_shift is not None:
            want['max_shift'] = float(args.max_shift)
        if args.tilt_range:
            t = args.tilt_range
            want['tilt_range'] = (-abs(t[0]), abs(t[0])) if len(t) == 1 else tuple(t)
        fields = {f.name for f in dataclasses.fields(SimulationConfig)}
        unknown = set(want) - fields
        if unknown:
            raise DeepClusterError('the simulator does not support %s' % ', '.join(sorted(unknown)))
        self.sim_config = SimulationConfig.for_scene(getattr(args, 'scene', None) or 'classic', **want)
        sites = getattr(args, 'mb_sites', None) or {nm: None for nm in args.membrane_bound or ()}
        self.sim = Simulator(templates, self.sim_config, device=device, negative=args.negative,
                             membrane_bound=sites)
        self.class_names = list(self.sim.class_names)
        self.contrast = self.sim_config.contrast
        self.device = device
        self.box, self.voxel_size = args.box, args.voxel_size
        self.chunk = max(1, args.sim_chunk)
        self._cached = (None, None)
        # fixed validation set (its own seed, never touches the training stream)
        n = args.val_per_class * len(self.class_names)
        lab = torch.arange(len(self.class_names)).repeat_interleave(args.val_per_class)
        g = torch.Generator(device=device).manual_seed(args.seed + 7919)
        parts = [self.sim.batch(lab[a:a + 256].to(device), g) for a in range(0, n, 256)]
        self.val = (torch.cat(parts).float(), lab.to(device))
        self.card = {'source': 'simulated on the fly', 'structures': [os.path.abspath(p) for p in
                                                                     (args.structures or [])],
                     'procedural': args.procedural, 'membrane_bound': list(args.membrane_bound or ()),
                     'embedded': list(args.embedded or ()),
                     'scene': getattr(args, 'scene', None) or 'classic',
                     'binding_sites_zyx': {k: [round(float(v), 4) for v in d]
                                           for k, d in self.sim.binding_sites.items() if k in sites},
                     'templates': {t.name: t.source for t in templates},
                     'negative_class': bool(args.negative),
                     'simulation': plain(dataclasses.asdict(self.sim_config)),
                     'n_val': int(n), 'val_seed': args.seed + 7919}
        log.info('simulating %d classes (%s) at box %d, %g A/voxel on %s; validation set %d',
                 len(self.class_names), ', '.join(self.class_names), self.box, self.voxel_size,
                 device, n)

    def batch(self, step, batch_size, seed):
        c = step // self.chunk
        if self._cached[0] != c:
            g = step_generator(seed, c)
            lab = torch.cat([balanced_labels(batch_size, len(self.class_names), g)
                             for _ in range(self.chunk)]).to(self.device)
            gd = step_generator(seed, c, self.device)
            self._cached = (c, (self.sim.batch(lab, gd).float(), lab))
        x, lab = self._cached[1]
        a = (step % self.chunk) * batch_size
        return x[a:a + batch_size], lab[a:a + batch_size]

    def val_batches(self, batch_size):
        x, y = self.val
        for a in range(0, len(y), batch_size):
            yield x[a:a + batch_size], y[a:a + batch_size]


class Prefetcher:
    """Prepare batch s+1 in a thread while step s trains (batches depend on s only)."""

    def __init__(self, fn):
        self.fn, self.next, self.thread, self.result = fn, None, None, None

    def _work(self, s):
        try:
            self.result = (s, self.fn(s), None)
        except BaseException as e:
            self.result = (s, None, e)

    def get(self, s, prefetch_next=True):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.result is not None and self.result[0] == s:
            _, out, err = self.result
            if err is not None:
                raise err
        else:
            out = self.fn(s)
        self.result = None
        if prefetch_next:
            self.thread = threading.Thread(target=self._work, args=(s + 1,), daemon=True)
            self.thread.start()
        return out
