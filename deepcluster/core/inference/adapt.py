"""Adapting the pretrained encoder to the user's own, unlabelled subtomograms
(``embed --adapt``).

``bn``
    The BatchNorm statistics of the un-folded network are re-estimated on the
    input set: layer by layer, each layer's per-channel mean and variance over
    *all* the input subtomograms with the layers before it already re-estimated,
    i.e. exactly what one full-batch pass in training mode would give, but
    streamed in batches (memory flat in N: one batch of volumes at a time; each
    of the five layers costs one pass through the data). No randomness.
``full``
    ``bn``, then fine-tuning of the layers after the encoder (the two fully
    connected layers that make the 32-d feature, and the classifier) with the
    synthetic supervised task as an anchor against collapse. The encoder (its
    convolutions, with the user's BatchNorm statistics) turns a seeded subsample
    of the user's subtomograms, each in ``VIEWS`` views that keep the missing
    wedge where it is (one of the four proper 180-degree rotations about the box
    axes, integer shifts, added noise), and a bank of subtomograms simulated from
    the model's own training classes (its config's training card; through the
    un-adapted BatchNorm statistics: domain-specific BatchNorm) into pooled
    descriptors once; the steps then train on those: the cross-entropy of the
    simulated ones and the consistency of two views of one user subtomogram.
    Self-training on confident k-means pseudo-labels of the user's (over-clustered,
    DeepCluster-style, re-clustered every ``RECLUSTER_EVERY`` steps) is there too
    but off (weight 0): on the validation sets (bench_physical's cellular scene,
    seeds 101-102) it lowered the V-measure by 0.017 on average while raising the
    silhouette, i.e. it sharpens k-means' own mistakes. So a step
    costs microseconds of network time and the run is dominated by the passes
    over the data; the number of steps is fixed (``DEFAULT_STEPS``), the run
    reproducible for a seed; the time budget only stops it early (logged).

Both end with a guard: the adapted features of a seeded subsample must be about
as separable as the un-adapted ones by an unsupervised criterion (``separability``,
the mean k-means silhouette; at most ``GUARD_MARGIN`` lower), else the un-adapted
model is kept (``AdaptResult.accepted``). The silhouette is a weak judge of small
changes (BatchNorm re-estimation lowers it a little where the V-measure rises;
self-training on pseudo-labels raises it where the V-measure falls), so the
guard catches collapse and gross damage, not a 0.01 loss.
A set below ``MIN_SUBTOMOGRAMS`` is not adapted at all.
"""
import copy
import dataclasses
import logging
import os
import platform
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepcluster.core import DeepClusterError, fmt_time
from deepcluster.core.inference.embed import _normalise_batch, prepare_batch
from deepcluster.core.inference.volumes import read_volume

log = logging.getLogger(__name__)

MODES = ('none', 'bn', 'full')
DEFAULT_MODE = 'bn'
DEFAULT_MINUTES = 5.0
DEFAULT_STEPS = 300
MIN_SUBTOMOGRAMS = 100        # below this the statistics are too noisy to trust (bench_adapt: 'min_n')
BATCH = 64                    # volumes per pass of the BN estimate
VIEWS = 4                     # wedge-keeping views per user subtomogram (the first as given)
HEAD_SAMPLE = 4096            # user subtomograms whose descriptors the fine-tuning sees
SYNTHETIC_BANK = 512          # simulated subtomograms of the anchor
HEAD_BATCH = 256
LR = 1e-3
RECLUSTER_EVERY = 100
PSEUDO_K = 20                 # over-clustering for the pseudo-labels
PSEUDO_CONFIDENT = 0.5        # fraction of each cluster (nearest its centroid) kept
TEMPERATURE = 0.1
WEIGHTS = {'synthetic': 1.0, 'consistency': 1.0, 'pseudo': 0.0}   # pseudo-labels: V -0.017 on validation (bench_adapt)
GUARD_SAMPLE = 2000
GUARD_KS = (4, 8, 12, 16)
GUARD_MARGIN = 0.05           # silhouette the adaptation may lose before it is refused: re-estimating
                              # BatchNorm lowers it by 0.01-0.02 where the V-measure stays or rises


# ================================================================ the user's data
class VolumeSource:
    """The user's subtomograms, prepared for the model, by index: nothing is held
    in memory but the batch asked for (files are read again on each request)."""

    def __init__(self, n, get, description):
        self.n, self._get, self.description = int(n), get, description

    def __len__(self):
        return self.n

    def batch(self, idx):
        """(B, box, box, box) float32 tensor of the items ``idx``."""
        return self._get(np.asarray(idx, dtype=np.int64))

    def batches(self, batch_size=BATCH, idx=None):
        idx = np.arange(self.n) if idx is None else np.asarray(idx)
        for a in range(0, len(idx), batch_size):
            yield self.batch(idx[a:a + batch_size])

    @classmethod
    def from_files(cls, files, voxel_sizes, config, invert_contrast=False):
        files, sizes = list(files), list(voxel_sizes)

        def get(idx):
            return prepare_batch([read_volume(files[i])[0] for i in idx], [sizes[i] for i in idx],
                                 config, invert_contrast)
        return cls(len(files), get, {'files': len(files), 'first': files[0] if files else None,
                                     'voxel_sizes': sorted(set(round(float(v), 4) for v in sizes)),
                                     'inverted': bool(invert_contrast)})

    @classmethod
    def from_arrays(cls, vols, voxel_size, config, invert_contrast=False):
        n = len(vols)
        sizes = list(voxel_size) if np.ndim(voxel_size) else [float(voxel_size)] * n

        def get(idx):
            return prepare_batch([np.asarray(vols[i], np.float32) for i in idx], [sizes[i] for i in idx],
                                 config, invert_contrast)
        return cls(n, get, {'arrays': n, 'voxel_sizes': sorted(set(round(float(v), 4) for v in sizes)),
                            'inverted': bool(invert_contrast)})


# ================================================================ BatchNorm statistics
class _Stop(Exception):
    pass


def bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _input(batch, device):
    return batch.to(device).unsqueeze(1)


@torch.no_grad()
def reestimate_bn(model, source, batch_size=BATCH, device='cpu', progress=True):
    """Set every BatchNorm's running mean/variance to the statistics of its input
    over the whole ``source`` (layer by layer, streamed); returns the model (eval).
    Equal to one full-batch training-mode pass (momentum 1), up to rounding."""
    layers = bn_layers(model)
    if not layers:
        raise DeepClusterError('the model has no BatchNorm layers: --adapt bn needs the fast architecture')
    model.eval()
    t0 = time.perf_counter()
    counts = []
    for li, layer in enumerate(layers):
        acc = {}

        def hook(mod, inp):
            x = inp[0].double()
            dims = [d for d in range(x.dim()) if d != 1]
            acc['n'] = acc.get('n', 0) + x.numel() // x.shape[1]
            acc['s'] = acc.get('s', 0) + x.sum(dims)
            acc['q'] = acc.get('q', 0) + (x * x).sum(dims)
            raise _Stop
        h = layer.register_forward_pre_hook(hook)
        try:
            for batch in source.batches(batch_size):
                try:
                    model.features(_input(batch, device))
                except _Stop:
                    pass
        finally:
            h.remove()
        n = acc['n']
        mean = acc['s'] / n
        var = (acc['q'] / n - mean * mean).clamp_min(0)    # biased: what a training-mode pass normalises by
        layer.running_mean.copy_(mean.to(layer.running_mean))
        layer.running_var.copy_(var.to(layer.running_var))
        layer.num_batches_tracked.fill_(1)
        counts.append(n)
        if progress:
            el = time.perf_counter() - t0
            log.info('adapt bn: layer %d/%d re-estimated on %d subtomograms  ETA %s', li + 1, len(layers),
                     len(source), fmt_time(el / (li + 1) * (len(layers) - li - 1)))
    for layer, n in zip(layers, counts):      # stored unbiased, as torch stores it
        layer.running_var.mul_(n / max(n - 1, 1))
    return model


# ================================================================ separability guard
def separability(X, seed=0, sample=GUARD_SAMPLE, ks=GUARD_KS):
    """Mean silhouette of k-means (k in ``ks``, below n/5) on a seeded subsample of
    the (L2-normalised) features: higher = more separable."""
    from sklearn.metrics import silhouette_score
    from deepcluster.core.analysis.cluster import cluster_features
    X = np.asarray(X, np.float32)
    rng = np.random.default_rng(seed)
    if len(X) > sample:
        X = X[np.sort(rng.choice(len(X), sample, replace=False))]
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    vals = []
    for k in ks:
        if k >= len(X) / 5:
            continue
        lab = cluster_features(X, k, 'kmeans', seed=seed, scores=False)[0]
        if len(set(lab.tolist())) > 1:
            vals.append(float(silhouette_score(X, lab)))
    return float(np.mean(vals)) if vals else float('nan')


# ================================================================ full fine-tuning
def _structures_root():
    return os.environ.get('DEEPCLUSTER_STRUCTURES') or ''


def anchor_simulator(config, device='cpu', seed=0):
    """A Simulator of the model's own training classes (its config's card), or
    None when the card has none. Structure folders that moved are looked for under
    $DEEPCLUSTER_STRUCTURES (by folder name); classes whose files are missing are
    left out (logged)."""
    from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator
    from deepcluster.core.datamodel.structures import templates_for
    card = config.get('training') or {}
    if card.get('source') != 'simulated on the fly':
        return None
    structures = []
    for p in card.get('structures') or []:
        alt = os.path.join(_structures_root(), os.path.basename(os.path.normpath(p)))
        if os.path.exists(p):
            structures.append(p)
        elif _structures_root() and os.path.exists(alt):
            structures.append(alt)
        else:
            log.warning('adapt full: training structures %s not found (set DEEPCLUSTER_STRUCTURES); '
                        'the anchor uses the other classes', p)
    names = set(config.get('class_names') or ())
    templates = templates_for(structures, card.get('procedural') or 0, float(config['voxel_size']),
                              card.get('seed', 0),
                              [e for e in card.get('embedded') or () if structures])
    templates = [t for t in templates if t.name in names]
    if not templates:
        return None
    fields = {f.name for f in dataclasses.fields(SimulationConfig)}
    sim_cfg = SimulationConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in (card.get('simulation') or {}).items() if k in fields})
    have = {t.name for t in templates}
    sim = Simulator(templates, sim_cfg, device=device, negative=bool(card.get('negative_class')),
                    membrane_bound=tuple(m for m in card.get('membrane_bound') or () if m in have))
    missing = sorted(set(sim.class_names) - names)
    if missing:
        raise DeepClusterError('the model\'s training card does not match its classes (%s)' % ', '.join(missing))
    sim.head_index = torch.tensor([config['class_names'].index(c) for c in sim.class_names])
    return sim


def wedge_views(x, gen, max_shift=2, noise=(0.0, 0.5)):
    """An augmented copy of prepared volumes (B, D, D, D) that keeps the missing
    wedge (beam z, tilt axis y) where it is: one of the four proper 180-degree
    rotations about the box axes (each maps the wedge onto itself and keeps the
    hand), an integer shift of up to ``max_shift`` voxels per axis (circular),
    Gaussian noise of a random level, renormalised."""
    from deepcluster.core.model.training_data import random_rot180
    x = random_rot180(x.clone(), gen)
    b = x.shape[0]
    s = torch.randint(-max_shift, max_shift + 1, (b, 3), generator=gen)
    for i in range(b):
        if s[i].any():
            x[i] = torch.roll(x[i], tuple(s[i].tolist()), dims=(0, 1, 2))
    sd = torch.rand(b, generator=gen) * (noise[1] - noise[0]) + noise[0]
    x = x + sd.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return _normalise_batch(x)


@torch.no_grad()
def _embed_source(model, source, idx, device, batch_size=BATCH):
    model.eval()
    return torch.cat([model.features(_input(b, device)).float().cpu()
                      for b in source.batches(batch_size, idx)]).numpy()


def _bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in bn_layers(model)]


@torch.no_grad()
def _set_bn_stats(model, stats):
    for m, (mean, var) in zip(bn_layers(model), stats):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


def _gen(seed, *keys):
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0]))


@torch.no_grad()
def user_descriptors(model, source, seed, device, views=None, sample=None, progress=True):
    """(items, pooled encoder descriptors (views, M, C)) of a seeded subsample of up
    to ``sample`` user subtomograms: view 0 as given, the others ``wedge_views``."""
    views, sample = views or VIEWS, sample or HEAD_SAMPLE
    rng = np.random.default_rng([int(seed), 1])
    n = len(source)
    idx = np.sort(rng.choice(n, min(n, sample), replace=False))
    out, t0 = [], time.perf_counter()
    for v in range(views):
        parts = []
        for j, a in enumerate(range(0, len(idx), BATCH)):
            x = source.batch(idx[a:a + BATCH])
            if v:
                x = wedge_views(x, _gen(seed, 2, v, j))
            parts.append(model._pooled(_input(x, device)).float())
        out.append(torch.cat(parts))
        if progress:
            el = time.perf_counter() - t0
            log.info('adapt full: view %d/%d of %d subtomograms  ETA %s', v + 1, views, len(idx),
                     fmt_time(el / (v + 1) * (views - v - 1)))
    return idx, torch.stack(out)


@torch.no_grad()
def synthetic_descriptors(model, sim, seed, device, n=None):
    """(pooled descriptors (n, C), head indices) of ``n`` subtomograms simulated
    from the model's training classes (balanced, seeded)."""
    n = n or SYNTHETIC_BANK
    g = _gen(seed, 3)
    k = len(sim.class_names)
    lab = torch.arange(n) % k
    lab = lab[torch.randperm(n, generator=g)]
    parts = []
    for a in range(0, n, BATCH):
        parts.append(model._pooled(_input(sim.batch(lab[a:a + BATCH], g).float(), device)).float())
    return torch.cat(parts), sim.head_index[lab].to(device)


def _pseudo_labels(f, seed, round_):
    """(labels, unit centroids, confident mask) of an over-clustering of features f."""
    from deepcluster.core.analysis.cluster import cluster_features
    X = F.normalize(f, dim=1).cpu().numpy()
    k = int(min(PSEUDO_K, max(2, len(X) // 20)))
    lab = np.asarray(cluster_features(X, k, 'kmeans', seed=int(seed) + round_, scores=False)[0])
    lab = np.searchsorted(np.unique(lab), lab)
    C = np.stack([X[lab == c].mean(0) for c in range(lab.max() + 1)])
    C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    sim = (X * C[lab]).sum(1)
    keep = np.zeros(len(X), bool)
    for c in range(len(C)):
        m = np.flatnonzero(lab == c)
        keep[m[np.argsort(-sim[m])[:max(1, int(round(len(m) * PSEUDO_CONFIDENT)))]]] = True
    dev = f.device
    return torch.from_numpy(lab).to(dev), torch.from_numpy(C).float().to(dev), torch.from_numpy(keep).to(dev)


def finetune(model, config, source, steps=DEFAULT_STEPS, minutes=DEFAULT_MINUTES, seed=0, device='cpu',
             weights=None, lr=None, progress=True, synthetic_stats=None):
    """Fine-tune the layers after the encoder (the fully connected layers that make
    the 32-d feature, and the classifier) of ``model`` on the pooled descriptors of
    the user's subtomograms (several wedge-keeping views each, through the encoder
    with the user's BatchNorm statistics) and of simulated ones (through the encoder
    with ``synthetic_stats``, the un-adapted model's: domain-specific BatchNorm).
    The encoder's weights stay. Returns (model, card)."""
    w = dict(WEIGHTS, **(weights or {}))
    lr = LR if lr is None else lr
    t0 = time.perf_counter()
    deadline = t0 + 60.0 * minutes if minutes else None
    model.eval()
    idx, du = user_descriptors(model, source, seed, device, progress=progress)
    sim = anchor_simulator(config, 'cpu', seed) if w['synthetic'] > 0 else None
    if w['synthetic'] > 0 and sim is None:
        log.warning('adapt full: the model has no simulated training card: no synthetic anchor')
    if sim is not None:
        user_stats = _bn_stats(model)
        _set_bn_stats(model, synthetic_stats or user_stats)
        ds, ys = synthetic_descriptors(model, sim, seed, device)
        _set_bn_stats(model, user_stats)
    params = list(model.embed.parameters()) + list(model.head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    views, m = du.shape[0], du.shape[1]
    sums = {k: 0.0 for k in WEIGHTS}
    pseudo, last, done, planned = None, time.perf_counter(), 0, steps
    t_steps = last
    for step in range(steps):
        g = _gen(seed, 4, step)
        if w['pseudo'] > 0 and step % RECLUSTER_EVERY == 0:
            with torch.no_grad():
                pseudo = _pseudo_labels(model.embed(du[0]), seed, step // RECLUSTER_EVERY)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        if sim is not None:
            j = torch.randint(len(ys), (HEAD_BATCH,), generator=g)
            l_syn = F.cross_entropy(model.head(model.embed(ds[j])), ys[j])
            loss = loss + w['synthetic'] * l_syn
            sums['synthetic'] += float(l_syn.detach())
        i = torch.randint(m, (HEAD_BATCH,), generator=g)
        va = torch.randint(views, (HEAD_BATCH,), generator=g)
        vb = (va + 1 + torch.randint(max(views - 1, 1), (HEAD_BATCH,), generator=g)) % views
        fa = F.normalize(model.embed(du[va, i]), dim=1)
        fb = F.normalize(model.embed(du[vb, i]), dim=1)
        if w['consistency'] > 0:
            l_c = (1 - (fa * fb).sum(1)).mean()
            loss = loss + w['consistency'] * l_c
            sums['consistency'] += float(l_c.detach())
        if pseudo is not None:
            lab, C, keep = pseudo
            k = keep[i]
            if k.any():
                l_p = 0.5 * (F.cross_entropy(fa[k] @ C.T / TEMPERATURE, lab[i][k])
                             + F.cross_entropy(fb[k] @ C.T / TEMPERATURE, lab[i][k]))
                loss = loss + w['pseudo'] * l_p
                sums['pseudo'] += float(l_p.detach())
        loss.backward()
        opt.step()
        done = step + 1
        now = time.perf_counter()
        if deadline and now > deadline and done < steps:
            log.warning('adapt full: the %.1f-minute budget ran out after %d of %d steps (the result '
                        'depends on the machine; give more --adapt-minutes for the full run)',
                        minutes, done, steps)
            break
        if progress and (now - last > 10 or done == steps):
            last = now
            rate = done / max(now - t_steps, 1e-9)
            log.info('adapt full: step %d/%d  %.0f steps/s  losses %s  ETA %s', done, steps, rate,
                     ' '.join('%s %.3f' % (k, v / done) for k, v in sums.items() if w[k] > 0),
                     fmt_time((steps - done) / max(rate, 1e-9)))
    model.eval()
    card = {'trained': 'the fully connected layers after the encoder (encoder weights kept)',
            'steps': done, 'steps_planned': planned, 'lr': lr, 'weights': w, 'views': int(views),
            'user_items': int(m), 'synthetic_items': int(len(ys)) if sim is not None else 0,
            'anchor_classes': len(sim.class_names) if sim is not None else 0,
            'mean_losses': {k: round(v / max(done, 1), 4) for k, v in sums.items() if w[k] > 0},
            'seconds': round(time.perf_counter() - t0, 1)}
    return model, card


@dataclasses.dataclass
class AdaptResult:
    model: object            # the model to embed with (the adapted one, or the original if rejected)
    config: dict             # its config (with an 'adaptation' card when accepted)
    accepted: bool
    reason: str
    report: dict
    adapted: object = None   # the adapted model even when the guard rejected it (benchmarks)


def adapt_model(model, config, source, mode=DEFAULT_MODE, minutes=DEFAULT_MINUTES, steps=None, seed=0,
                device='cpu', guard=True, base_model=None, weights=None, progress=True):
    """Adapt ``model`` (un-folded, any device) to ``source`` (a ``VolumeSource``).
    The input model is not modified. See the module doc for the modes and guard."""
    if mode not in MODES:
        raise DeepClusterError('--adapt %s: expected one of %s' % (mode, ', '.join(MODES)))
    report = {'mode': mode, 'n': len(source), 'seed': int(seed), 'minutes': minutes,
              'base_model': base_model, 'min_subtomograms': MIN_SUBTOMOGRAMS}
    if mode == 'none':
        return AdaptResult(model, config, False, 'not asked', report)
    if len(source) < MIN_SUBTOMOGRAMS:
        reason = ('%d subtomograms are too few to adapt on (at least %d): the un-adapted model is used'
                  % (len(source), MIN_SUBTOMOGRAMS))
        log.warning('adapt: %s', reason)
        return AdaptResult(model, config, False, reason, dict(report, accepted=False, reason=reason))
    if not bn_layers(model):
        raise DeepClusterError('--adapt %s: the model (%s) has no BatchNorm layers; adapt needs the fast '
                               'architecture' % (mode, config.get('arch')))
    t0 = time.perf_counter()
    dev = torch.device(device)
    new = copy.deepcopy(model).to(dev).float()
    reestimate_bn(new, source, device=dev, progress=progress)
    if mode == 'full':
        new, report['finetune'] = finetune(new, config, source, DEFAULT_STEPS if steps is None else steps,
                                           minutes, seed, dev, weights, progress=progress,
                                           synthetic_stats=[(a.to(dev), b.to(dev)) for a, b in _bn_stats(model)])
    report['seconds'] = round(time.perf_counter() - t0, 1)
    accepted, reason = True, 'adapted'
    if guard:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(source), min(len(source), GUARD_SAMPLE), replace=False))
        before = separability(_embed_source(copy.deepcopy(model).to(dev).float(), source, idx, dev), seed)
        after = separability(_embed_source(new, source, idx, dev), seed)
        report['separability'] = {'criterion': 'mean k-means silhouette, k in %s, %d items'
                                                % (list(GUARD_KS), len(idx)),
                                  'before': round(before, 4), 'after': round(after, 4)}
        report['separability']['margin'] = GUARD_MARGIN
        if not after >= before - GUARD_MARGIN:
            accepted = False
            reason = ('the adapted features are less separable than the un-adapted ones (silhouette '
                      '%.3f, was %.3f; at most %.2f less is accepted): the un-adapted model is used'
                      % (after, before, GUARD_MARGIN))
            log.warning('adapt %s: %s', mode, reason)
        else:
            log.info('adapt %s: separability %.3f -> %.3f (silhouette): adapted model used', mode, before, after)
    report.update(accepted=accepted, reason=reason)
    if not accepted:
        return AdaptResult(model, config, False, reason, report, new.cpu().eval())
    cfg = copy.deepcopy(config)
    cfg['adaptation'] = dict(report, adapted_on=source.description,
                             date=time.strftime('%Y-%m-%d %H:%M:%S'), torch=torch.__version__,
                             device=str(dev), platform=platform.platform(),
                             previous=config.get('adaptation'))
    return AdaptResult(new.cpu().eval(), cfg, True, reason, report, new.cpu().eval())


def adapted_paths(out):
    """(model .pt, report .json) written beside the features ``out``: features_adapted.pt."""
    base = out[:-4] if out.lower().endswith('.npy') else out
    return base + '_adapted.pt', base + '_adapt.json'


def adapt_for_embedding(files, sizes, invert_contrast, model_path=None, device='cpu', precision='auto',
                        mode=DEFAULT_MODE, minutes=DEFAULT_MINUTES, steps=None, seed=0, out=None, guard=True):
    """The hook of ``embed_files``: adapt the model to these files and return
    (Embedder to use, finish) where ``finish()`` writes the adapted model and the
    report beside ``out`` (call it once the features are written)."""
    import json
    from deepcluster.core.inference.embed import Embedder
    from deepcluster.core.inference.volumes import atomic_path
    from deepcluster.core.model.network import load_model, model_sha256, plain, resolve_model_path, save_model
    path = resolve_model_path(model_path)
    model, config = load_model(path, 'cpu')
    source = VolumeSource.from_files(files, sizes, config, invert_contrast)
    log.info('adapt %s: %d subtomograms, model %s%s', mode, len(source), path,
             ', budget %.1f min' % minutes if mode == 'full' and minutes else '')
    res = adapt_model(model, config, source, mode, minutes, steps, seed, device, guard=guard,
                      base_model={'path': os.path.abspath(path), 'sha256': model_sha256(path)})
    emb = Embedder(res.model, res.config, device, precision)
    model_out, report_out = adapted_paths(out) if out else (None, None)
    res.report['model_file'] = model_out if res.accepted else None

    def finish():
        if not out:
            return
        if res.accepted:
            save_model(model_out, res.model, res.config)
            log.info('adapt %s: adapted model written to %s (reuse it with --model)', mode, model_out)
        with atomic_path(report_out) as tmp, open(tmp, 'w') as f:
            json.dump(plain(res.report), f, indent=1)
    return emb, finish
