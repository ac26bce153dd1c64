"""Clustering quality of a trained model on held-out synthetic test sets.

Scenarios (each 50 subtomograms per class, seeds never used in training):
- shrec:     the 13 SHREC 2021 classes + negative at the default data model,
             k-means at k = 14 (paper: V-measure 0.96 on its SHREC test data);
- membrane:  ribosomes 4v4r / 4v7r free and membrane-bound (+ negative), k = 5:
             the context the paper's model could not see (its section 4.4);
- membrane_any_side: the same with the membrane touching each membrane-bound
             ribosome on a random side, not the map's -z that the data model's
             ``_mb`` classes use: a binding site the shipped model was not told;
- unseen:    10 procedural pseudo-molecules from a seed the model never saw
             (+ negative), k = 11: shapes outside the training classes;
- voxel13.68: the SHREC set simulated at 13.68 A/voxel (box 30, as the paper's
             real data), resampled to the model by the embedding, k = 14; at the
             same per-voxel SNR a particle covers (13.68/10)^3 = 2.56x fewer
             voxels, i.e. carries 2.56x less signal, so
- voxel13.68_same_signal: the same with the SNR range times 2.56 (the same
             signal per particle as at 10 A): what is left is the cost of the
             coarser sampling and the resampling itself;
- shift:     the shrec scenario with the particle off-centre by up to 0, 1 (the
             data model default), 2, 3 and 5 voxels per axis: how exact the picks must be;
- snr:       the shrec scenario per SNR band (0.1-0.3, 0.3-1, 1-3, 3-10, 10-100,
             100-1000 and noise-free): how the quality depends on the noise
             (small particles vanish first) and whether clean, high-contrast data stay in domain;
- methods:   the clustering methods of ``cluster --method`` on the same features at
             the true k, over three test seeds each of shrec, SNR 1-3, SNR 3-10,
             membrane and unseen (one test set moves V by up to 0.03-0.04, so a
             method's gain of 0.01 needs several).
Each scenario also reports the k that ``--k auto`` chooses on these features (the
CLI's default criterion and range, k = 2..20) and the V-measure there ('auto_k').
Where the model was trained on the test classes, its own classifier's accuracy
and V-measure on them are reported too ('supervised_classifier'): the ceiling
that k-means on its features can hardly pass.
Writes benchmarks/results/bench_quality.json (+ PNGs of the shrec scenario).
"""
import argparse
import functools
import json
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from deepcluster.core.analysis import cluster

from deepcluster.core.analysis import evaluation

from deepcluster.core.analysis import k_selection

from deepcluster.core.analysis import plots  # noqa: E402
from deepcluster.core.inference.embed import Embedder, embed_arrays, prepare_batch       # noqa: E402
from deepcluster.core.model.network import model_sha256                             # noqa: E402
from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator              # noqa: E402
from deepcluster.core.datamodel.structures import load_structures, procedural_templates  # noqa: E402

SHREC = ['1s3x', '3qm1', '3gl1', '3h84', '2cg9', '3d2f', '1u6g', '3cf3', '1bxn', '1qvr',
         '4cr2', '5mrc', '4v94']
TEST_SEED = 20261126          # never a training seed
N_PER_CLASS = 50
AUTO_K_RANGE = (2, 20)        # the cluster CLI's default --k-range
SHIFTS = (0.0, 1.0, 2.0, 3.0, 5.0)   # picking errors (voxels, uniform per axis; data model default 1)


def structures_root():
    root = os.environ.get('DEEPCLUSTER_STRUCTURES') or os.path.join(REPO, '..', 'shared', 'structures')
    return os.path.abspath(root)


def simulate(templates, voxel_size, box, seed, membrane_bound=(), device='cpu', snr=None, max_shift=None,
             mb_random_side=0.0):
    cfg = SimulationConfig(box=box, voxel_size=voxel_size, **({'snr': tuple(snr)} if snr else {}),
                           **({} if max_shift is None else {'max_shift': max_shift}), mb_random_side=mb_random_side)
    sim = Simulator(templates, cfg, device=device,
                    negative=True, membrane_bound=membrane_bound)
    names = sim.class_names
    labels = torch.arange(len(names)).repeat_interleave(N_PER_CLASS)
    gen = torch.Generator(device=sim.device).manual_seed(seed)
    vols = torch.cat([sim.batch(labels[a:a + 128].to(sim.device), gen).cpu()
                      for a in range(0, len(labels), 128)]).numpy()
    return vols, np.array([names[i] for i in labels.tolist()])


@torch.inference_mode()
def supervised_ceiling(emb, vols, truth, voxel_size, invert_contrast=False):
    """The model's own classifier restricted to the test classes (None if it does not
    know them all): k-means on the features rarely beats it, so it tells a feature
    or clustering loss (k-means well below it) from a data or model limit (both low)."""
    names = list(emb.config.get('class_names') or ())
    classes = sorted(set(truth))
    if not set(classes) <= set(names):
        return None
    idx = torch.tensor([names.index(c) for c in classes])
    pred = []
    for a in range(0, len(vols), 128):
        x = prepare_batch(list(vols[a:a + 128]), [voxel_size] * len(vols[a:a + 128]), emb.config, invert_contrast)
        x = x.to(emb.device).unsqueeze(1).contiguous(memory_format=torch.channels_last_3d)
        pred.append(emb.model.forward_both(x)[0][:, idx].argmax(1).cpu())
    pred = np.array(classes)[torch.cat(pred).numpy()]
    return {'accuracy': round(float((pred == truth).mean()), 4),
            'v_measure': round(float(evaluation.evaluate(truth, pred)['v_measure']), 4)}


def score(emb, vols, truth, voxel_size, seed, plots_dir=None, ceiling=True, invert_contrast=False, sweep_k=False):
    """k-means at the true k, at the k --k auto picks, the model's own classifier
    and (with ``plots_dir`` or ``sweep_k``) the scores for each k."""
    t0 = time.time()
    X = embed_arrays(vols, emb, emb.config, voxel_size=voxel_size, batch_size=128, invert_contrast=invert_contrast)
    t_embed = time.time() - t0
    k = len(set(truth))
    labels, _, _ = cluster.cluster_features(X, k, 'kmeans', seed=seed, scores=False)
    res = evaluation.evaluate(truth, labels)
    out = {'n': int(len(truth)), 'k': k, 'embed_seconds': round(t_embed, 2)}
    out.update({m: round(res[m], 4) for m in ('v_measure', 'homogeneity', 'completeness', 'ari', 'nmi')})
    out['contingency'] = res['contingency']
    chosen, _ = k_selection.choose_k(X, AUTO_K_RANGE, seed=seed)
    auto = cluster.cluster_features(X, chosen, 'kmeans', seed=seed, scores=False)[0]
    out['auto_k'] = {'k': int(chosen), 'criterion': k_selection.DEFAULT_K_CRITERION,
                     'v_measure': round(evaluation.evaluate(truth, auto)['v_measure'], 4)}
    ceiling = ceiling and supervised_ceiling(emb, vols, truth, voxel_size, invert_contrast)
    if ceiling:
        out['supervised_classifier'] = ceiling
    if plots_dir or sweep_k:
        sweep = evaluation.sweep_k(X, truth, range(2, 2 * k + 1), seed=seed)
        out['sweep'] = [{m: round(v, 4) if isinstance(v, float) else v for m, v in r.items()} for r in sweep]
        best = max(sweep, key=lambda r: r['v_measure'])
        out['best_k'] = {'k': best['k'], 'v_measure': round(best['v_measure'], 4)}
    if plots_dir:
        plots.write_cluster_report(plots_dir, X, labels + 1, truth=truth, sweep=sweep, seed=seed,
                                   true_k=k)
    return out


def compare_methods(emb, device, sets, seeds=3, methods=cluster.METHODS):
    """V-measure of each clustering method on the same features (hdbscan: its own k,
    its noise counted as one more cluster); ``sets``: {name: (templates, simulate()
    keywords)}, ``seeds`` test sets of each."""
    per = {}
    for i, (name, (tpl, kw)) in enumerate(sets.items()):
        for s in range(seeds):
            vols, truth = simulate(tpl, 10.0, 40, TEST_SEED + 100 + 10 * i + s, device=device, **kw)
            X = embed_arrays(vols, emb, emb.config, voxel_size=10.0, batch_size=128)
            for m in methods:
                lab = cluster.cluster_features(X, len(set(truth)), m, seed=0, scores=False)[0]
                v = evaluation.evaluate(truth, lab)['v_measure']     # hdbscan's noise: one more cluster
                per.setdefault(m, {}).setdefault(name, []).append(round(v, 4))
    return {'sets': per, 'seeds': seeds, 'n_sets': seeds * len(sets),
            'mean': {m: round(float(np.mean([v for vs in d.values() for v in vs])), 4) for m, d in per.items()},
            'mean_per_set': {m: {n: round(float(np.mean(vs)), 4) for n, vs in d.items()} for m, d in per.items()}}


def sweep(emb, tpl, seed, device, settings, key, label, ceiling=True):
    """The SHREC set simulated under each of ``settings`` ({name: simulate() keywords}) with
    one seed and scored: {key: {name: scores}, 'k', 'n', mean scores}."""
    parts = {}
    for name, kw in settings.items():
        vols, truth = simulate(tpl, 10.0, 40, seed, device=device, **kw)
        b = score(emb, vols, truth, 10.0, 0, ceiling=ceiling)
        b.pop('contingency')
        parts[name] = b
        print('  %s %-10s V-measure %.3f  (auto: k=%d, V %.3f)'
              % (label, name, b['v_measure'], b['auto_k']['k'], b['auto_k']['v_measure']), flush=True)
    r = {key: parts, 'k': 14, 'n': sum(b['n'] for b in parts.values())}
    r.update({m: round(float(np.mean([b[m] for b in parts.values()])), 4)
              for m in ('v_measure', 'homogeneity', 'completeness', 'ari')})
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=None, help='model file (default: the shipped model)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_quality.json'))
    ap.add_argument('--plots', default=os.path.join(HERE, 'results', 'quality'))
    ap.add_argument('--snr', type=float, nargs=2, default=None, help='SNR range of the test sets (default: the data model default)')
    ap.add_argument('--scenarios', nargs='+', default=['shrec', 'membrane', 'membrane_any_side', 'unseen', 'voxel13.68',
                                                        'voxel13.68_same_signal', 'snr', 'shift', 'methods'])
    a = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = structures_root()
    maps = os.path.join(root, 'maps_10A')
    dev = torch.device(a.device if a.device != 'cuda' or torch.cuda.is_available() else 'cpu')
    emb = Embedder.from_file(a.model, device=dev)
    result = {'model': os.path.relpath(a.model, REPO) if a.model else 'shipped default',
              'model_sha256': model_sha256(a.model), 'model_arch': emb.config.get('arch'),
              'n_per_class': N_PER_CLASS, 'test_seed': TEST_SEED,
              'device': str(dev), 'snr': a.snr or 'data-model default', 'torch': torch.__version__, 'machine': platform.machine(),
              'scenarios': {}}
    shrec10 = functools.lru_cache(None)(
        lambda: load_structures([os.path.join(maps, s + '.mrc') for s in SHREC], 10.0))
    ribosomes = functools.lru_cache(None)(
        lambda: load_structures([os.path.join(maps, s + '.mrc') for s in ('4v4r', '4v7r')], 10.0))
    t_all = time.time()
    for name in a.scenarios:
        t0 = time.time()
        if name == 'shrec':
            vols, truth = simulate(shrec10(), 10.0, 40, TEST_SEED, device=dev, snr=a.snr)
            r = score(emb, vols, truth, 10.0, 0, plots_dir=a.plots)
        elif name in ('membrane', 'membrane_any_side'):
            vols, truth = simulate(ribosomes(), 10.0, 40, TEST_SEED + 1, membrane_bound=('4v4r', '4v7r'), device=dev, snr=a.snr,
                                   mb_random_side=float(name == 'membrane_any_side'))
            r = score(emb, vols, truth, 10.0, 0)
        elif name == 'unseen':
            tpl = procedural_templates(10, 10.0, seed=777)
            vols, truth = simulate(tpl, 10.0, 40, TEST_SEED + 2, device=dev, snr=a.snr)
            r = score(emb, vols, truth, 10.0, 0, ceiling=False)   # proc00... here are other shapes
        elif name in ('voxel13.68', 'voxel13.68_same_signal'):
            tpl = load_structures([os.path.join(maps, s + '.mrc') for s in SHREC], 13.68)
            snr = a.snr or SimulationConfig.snr
            if name.endswith('same_signal'):
                snr = [v * (13.68 / 10.0) ** 3 for v in snr]
            vols, truth = simulate(tpl, 13.68, 30, TEST_SEED + 3, device=dev, snr=snr)
            r = score(emb, vols, truth, 13.68, 0)
            r['snr'] = [round(v, 3) for v in snr]
        elif name == 'snr':
            bands = {'noise-free' if lo >= 1e4 else '%g-%g' % (lo, hi): {'snr': (lo, hi)} for lo, hi in
                     ((0.1, 0.3), (0.3, 1.0), (1.0, 3.0), (3.0, 10.0), (10.0, 100.0), (100.0, 1000.0),
                      (1e4, 1e4))}
            r = sweep(emb, shrec10(), TEST_SEED + 4, dev, bands, 'bands', 'SNR')
        elif name == 'shift':
            levels = {'%g' % v: {'snr': a.snr, 'max_shift': v} for v in SHIFTS}
            r = sweep(emb, shrec10(), TEST_SEED + 5, dev, levels, 'levels', 'picking error (voxels) up to',
                      ceiling=False)
        elif name == 'methods':
            r = compare_methods(emb, dev, {
                'shrec': (shrec10(), {}), 'SNR 1-3': (shrec10(), {'snr': (1.0, 3.0)}),
                'SNR 3-10': (shrec10(), {'snr': (3.0, 10.0)}),
                'membrane': (ribosomes(), {'membrane_bound': ('4v4r', '4v7r')}),
                'unseen': (procedural_templates(10, 10.0, seed=778), {})})
        else:
            raise SystemExit('unknown scenario %s' % name)
        r['seconds'] = round(time.time() - t0, 1)
        result['scenarios'][name] = r
        if name == 'methods':
            print('methods     mean V-measure over %d test sets: %s  (%.0f s)' % (r['n_sets'], ', '.join(
                '%s %.3f' % mv for mv in r['mean'].items()), r['seconds']), flush=True)
            continue
        auto = ('  auto: k=%d, V %.3f' % (r['auto_k']['k'], r['auto_k']['v_measure'])) if 'auto_k' in r else ''
        print('%-11s V-measure %.3f  homogeneity %.3f  completeness %.3f  ARI %.3f  (k=%d, n=%d, %.0f s)%s'
              % (name, r['v_measure'], r['homogeneity'], r['completeness'], r['ari'], r['k'], r['n'],
                 r['seconds'], auto), flush=True)
    result['seconds'] = round(time.time() - t_all, 1)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + '.tmp', 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(a.out + '.tmp', a.out)
    print('wrote %s' % a.out)


if __name__ == '__main__':
    main()
