"""The independent physical benchmark (issue 15, deliverable 1): subtomograms
cut from simulated cellular tomograms by benchmarks/realistic/ (a crowded slab
with bilayers and membrane-bound ribosomes, an explicit dose-symmetric tilt
series with per-layer/strip CTF, dose, Poisson counts, ice attenuation and
residual misalignment, weighted back-projection, picking error, tomogram units).
It shares no code with deepcluster.core's data model; the models are reached only
through deepcluster.core.inference.embed, as a user would (contrast 'auto').

For each kind of set ('paper', 'unseen', 'rare'), seed and model: k-means V,
homogeneity, completeness at the true k and over k, contingency tables, a
cross-validated linear probe of the 32-d features and of a handcrafted 20-number
descriptor, rare-class precision/recall/F1, membrane-bound vs cytosolic shares.
It judges; it never trains or tunes (choices belong on validation seeds >= 100).

    python benchmarks/bench_realistic.py                          # seeds 1 2, default + accurate, 13.68 A
    python benchmarks/bench_realistic.py --voxel-sizes 13.68 10 --kinds paper
    python benchmarks/bench_realistic.py --models default my.pt --out /tmp/r.json

The first run simulates the sets (~3-4 min each on 2 cores) into runs/realistic/.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchmarks.realistic import KINDS, handcrafted, make_set, score      # noqa: E402

RESULTS = os.path.join(HERE, 'results')


def embed(vols, voxel, model):
    """Features as `deepcluster embed --contrast auto` would give them."""
    import mrcfile
    from deepcluster.core.inference.embed import Embedder, embed_arrays, resolve_contrast
    emb = Embedder.from_file(model, precision='fp32')
    with tempfile.TemporaryDirectory() as d:
        idx = np.unique(np.linspace(0, len(vols) - 1, min(200, len(vols))).round().astype(int))
        files = []
        for i in idx:
            p = os.path.join(d, '%05d.mrc' % i)
            with mrcfile.new(p) as f:
                f.set_data(vols[i])
                f.voxel_size = voxel
            files.append(p)
        invert = resolve_contrast('auto', files, emb.config)
    return embed_arrays(vols, emb, None, voxel_size=voxel, invert_contrast=invert), bool(invert)


def plot(path, feats, labels, res, title):
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE
    y = np.asarray(labels)
    classes = res['classes']
    xy = TSNE(2, perplexity=30, init='pca', random_state=0).fit_transform(feats)
    fig = Figure(figsize=(11, 4.6))
    ax = fig.add_subplot(1, 2, 1)
    for c in classes:
        m = y == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6 if c != 'negative' else 4, label='%s (%d)' % (c, m.sum()))
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title('%s: t-SNE of the features' % title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(1, 2, 2)
    tab = np.array([res['contingency'][c] for c in classes])
    ax.imshow(tab, cmap='Blues')
    for i in range(tab.shape[0]):
        for j in range(tab.shape[1]):
            ax.text(j, i, str(tab[i, j]), ha='center', va='center', fontsize=7)
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel('k-means cluster (k = %d)' % res['k_true'], fontsize=8)
    ax.set_title('V %.3f (h %.3f, c %.3f); probe %.3f' % (res['v_measure'], res['homogeneity'],
                                                          res['completeness'], res['probe_accuracy']), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)


def brief(r):
    out = {'v_true_k': r['v_measure'], 'best_k': r['best_k']['k'], 'v_best_k': r['best_k']['v_measure'],
           'probe': r['probe_accuracy']}
    if 'rare' in r:
        out['rare_f1_best_k'] = r['rare']['best_k']['f1']
        out['rare_f1_true_k'] = r['rare']['at_true_k']['f1']
    if 'membrane_bound_vs_cytosolic' in r:
        out.update(r['membrane_bound_vs_cytosolic'])
    return out


def mean_spread(rows):
    keys = sorted(set.intersection(*[set(r) for r in rows]))
    return {k: {'mean': round(float(np.mean([r[k] for r in rows])), 4),
                'spread': round(float(np.ptp([r[k] for r in rows])), 4)} for k in keys}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--kinds', nargs='+', default=list(KINDS), choices=list(KINDS))
    ap.add_argument('--seeds', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--models', nargs='+', default=['default', 'accurate'])
    ap.add_argument('--voxel-sizes', nargs='+', type=float, default=[13.68])
    ap.add_argument('--out', default=os.path.join(RESULTS, 'bench_realistic.json'))
    ap.add_argument('--plots', default=os.path.join(RESULTS, 'realistic'))
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from deepcluster.core.model.network import model_sha256
    t0 = time.time()
    res = {'benchmark': 'realistic (independent physical simulator, benchmarks/realistic/)',
           'seeds': a.seeds, 'models': {m: model_sha256(m)[:16] for m in a.models}, 'sets': {}, 'summary': {}}
    for kind in a.kinds:
        for vx in a.voxel_sizes:
            per = {m: [] for m in a.models + ['handcrafted']}
            for seed in a.seeds:
                t = time.time()
                s = make_set(kind, seed, vx)
                gen = time.time() - t
                vols, labels = s['volumes'], s['labels']
                key = '%s_seed%d_%gA' % (kind, seed, vx)
                entry = {'n': len(labels), 'classes': s['info']['classes'], 'voxel_size': vx,
                         'simulation_seconds': s['info']['seconds'], 'n_tomograms': s['info']['n_tomograms'],
                         'volume_fractions': [r['volume_fraction'] for r in s['info']['tomograms']],
                         'loaded_or_made_seconds': round(gen, 1), 'models': {}}
                hc = handcrafted(vols)
                r = score(hc, labels, kind)
                entry['models']['handcrafted'] = r
                per['handcrafted'].append(brief(r))
                for m in a.models:
                    feats, inv = embed(vols, vx, m)
                    r = score(feats, labels, kind)
                    r['inverted_contrast'] = inv
                    entry['models'][m] = r
                    per[m].append(brief(r))
                    plot(os.path.join(a.plots, '%s_%s.png' % (key, m)), feats, labels, r, '%s, %s' % (key, m))
                    print('%s %s: V %.3f (best k %d: %.3f), probe %.3f vs handcrafted %.3f%s%s' % (
                        key, m, r['v_measure'], r['best_k']['k'], r['best_k']['v_measure'], r['probe_accuracy'],
                        entry['models']['handcrafted']['probe_accuracy'],
                        ', rare F1 %.3f' % r['rare']['best_k']['f1'] if 'rare' in r else '',
                        ', mb own %.2f cyto own %.2f' % (r['membrane_bound_vs_cytosolic']['mb_own'],
                                                         r['membrane_bound_vs_cytosolic']['cyto_own'])
                        if 'membrane_bound_vs_cytosolic' in r else ''), flush=True)
                res['sets'][key] = entry
            res['summary']['%s_%gA' % (kind, vx)] = {m: mean_spread(rows) for m, rows in per.items()}
    res['seconds'] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, a.out)
    print(json.dumps(res['summary'], indent=1))


if __name__ == '__main__':
    main()
