"""Speed and quality of deepcluster.core.analysis.cluster at scale, and which auto-k criterion works.

    .venv/bin/python benchmarks/bench_cluster.py [--n 1000000] [--k 20] [--quick]

Writes benchmarks/results/bench_cluster.json. Parts:
  switch  full KMeans vs ours at N = 100k..400k (where the switch-over pays).
  scale   N x 32 float32 (default 1,000,000) into k=20 clusters. Each variant runs
          in its own subprocess (so peak RSS is its own): our default (subsample
          fit + full Lloyd refinement), subsample fits of other sizes, plain
          subsample fit without refinement, MiniBatchKMeans, and the reference:
          scikit-learn KMeans on all N (n_init=%d). Quality: inertia on all N
          relative to the reference, ARI against the reference and V-measure
          against the true labels.
  auto_k  each k criterion on well-separated synthetic sets with known k
          (anisotropic, imbalanced Gaussian blobs in 32-d; the same L2-normalised
          onto the hypersphere): hits and time. How the criteria fare on real
          CNN features of simulated subtomograms (overlapping classes, where the
          default pca_bic was chosen): bench_quality.py, 'auto_k'.
  auto_k_time  choose_k with the default criterion on 10,000 items, k in 2..20.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from deepcluster.core.analysis import cluster as C  # noqa: E402
from deepcluster.core.analysis import evaluation as E
from deepcluster.core.analysis import k_selection as KS  # noqa: E402

REF_N_INIT = 10
DATA = dict(separation=10.0, anisotropy=8.0, imbalance=10.0)


def peak_rss_mb():
    """Peak resident memory of this process in MiB (VmHWM: unlike ru_maxrss it is not
    inherited from the parent across fork+exec)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------ one variant (child)
def child(variant, npy, k, out_labels):
    """Run one variant, ``name[@seed]``: reference_full_kmeans, minibatch_kmeans, ours,
    or ours:FIT_SAMPLE:REFINE_TOP (our method with other constants)."""
    name, _, seed = variant.partition('@')
    seed = int(seed or 0)
    X = np.load(npy, mmap_mode='r')
    rss0 = peak_rss_mb()
    t0 = time.time()
    if name == 'reference_full_kmeans':
        from sklearn.cluster import KMeans
        Xa = np.asarray(X, np.float32)
        km = KMeans(k, n_init=REF_N_INIT, random_state=seed).fit(Xa)
        labels = km.labels_
        extra = {'n_init': REF_N_INIT, 'iterations': int(km.n_iter_)}
    elif name == 'cli':   # the whole command: load, cluster, scores, representatives, CSV+JSON
        from deepcluster.cli import main as cli_main
        out = os.path.join(os.path.dirname(npy), 'labels.csv')
        cli_main(['-q', 'cluster', npy, '--k', str(k), '--seed', str(seed), '--out', out])
        with open(out) as f:
            next(f)
            labels = np.array([int(line.rsplit(',', 2)[1]) for line in f]) - 1
        extra = {'command': 'deepcluster cluster features.npy --k %d --out labels.csv' % k,
                 'labels_csv_mb': round(os.path.getsize(out) / 2 ** 20, 1)}
    elif name == 'minibatch_kmeans':
        from sklearn.cluster import MiniBatchKMeans
        Xa = np.asarray(X, np.float32)
        mb = MiniBatchKMeans(k, batch_size=4096, n_init=3, random_state=seed).fit(Xa)
        labels = mb.predict(Xa)
        extra = {'batch_size': 4096, 'n_init': 3}
    else:
        parts = name.split(':')
        if len(parts) == 3:
            C.FIT_SAMPLE, C.REFINE_TOP = int(parts[1]), int(parts[2])
        labels, _, info = C.cluster_features(X, k, seed=seed, scores=False)
        extra = {'fit': info['fit']}
    secs = time.time() - t0
    np.save(out_labels, np.asarray(labels, np.int32))
    return {'variant': variant, 'seconds': round(secs, 2), 'peak_rss_mb': round(peak_rss_mb(), 1),
            'rss_after_imports_mb': round(rss0, 1), **extra}


def bench_switch(ns=(100_000, 200_000, 400_000), k=20):
    """Where subsample restarts + refinement start to pay: full KMeans vs ours at several N."""
    from sklearn.cluster import KMeans
    rows = []
    for n in ns:
        X, y = E.synthetic_features(n, k, seed=1, **DATA)
        t = time.time()
        km = KMeans(k, n_init=C.N_INIT, random_state=0).fit(X)
        t_full = time.time() - t
        saved = C.FULL_FIT_MAX
        C.FULL_FIT_MAX = 0
        try:
            t = time.time()
            _, _, info = C.cluster_features(X, k, seed=0, scores=False)
            t_ours = time.time() - t
        finally:
            C.FULL_FIT_MAX = saved
        rows.append({'n': n, 'full_kmeans_s': round(t_full, 2), 'ours_s': round(t_ours, 2),
                     'inertia_ours_vs_full': round(info['inertia'] / km.inertia_, 5)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def inertia_of(X, labels, k):
    C_, _ = C._means(X, labels.astype(np.int64), k)
    d = C._distances(X, labels.astype(np.int64), C_)
    return float(np.sum(d.astype(np.float64) ** 2))


def bench_scale(n, k, variants):
    from sklearn.metrics import adjusted_rand_score, v_measure_score
    tmp = tempfile.mkdtemp(prefix='bench_cluster_')
    t = time.time()
    X, y = E.synthetic_features(n, k, seed=0, **DATA)
    npy = os.path.join(tmp, 'X.npy')
    np.save(npy, X)
    with open(os.path.join(tmp, 'X.csv'), 'w') as f:     # row names, as "embed" writes them
        f.write('row,file\n')
        f.writelines('%d,/data/tomo_%02d/subtomo_%07d.mrc\n' % (i, i % 37, i) for i in range(n))
    print('data %d x %d in %.1f s' % (n, X.shape[1], time.time() - t), flush=True)
    rows = []
    labels = {}
    for v in variants:
        out = os.path.join(tmp, 'labels_%d.npy' % len(rows))
        r = subprocess.run([sys.executable, __file__, '--child', v, '--npy', npy, '--k', str(k),
                            '--labels', out], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-2000:])
            raise SystemExit('variant %s failed' % v)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        lab = np.load(out)
        labels[v] = lab
        res['inertia'] = inertia_of(X, lab, k)
        res['v_measure_vs_truth'] = round(float(v_measure_score(y, lab)), 4)
        rows.append(res)
        print(json.dumps(res), flush=True)
    refs = [r for r in rows if r['variant'].startswith('reference_full_kmeans')]
    if refs:
        ref = min(refs, key=lambda r: r['inertia'])     # the best reference run
        for r in rows:
            r['inertia_vs_reference'] = round(r['inertia'] / ref['inertia'], 5)
            r['ari_vs_reference'] = round(float(adjusted_rand_score(labels[ref['variant']],
                                                                    labels[r['variant']])), 4)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return {'n': n, 'dim': int(X.shape[1]), 'k': k, 'data': dict(DATA, kind='synthetic_features'),
            'variants': rows}


# ------------------------------------------------------------------------ auto k
def bench_auto_k(quick=False):
    grid = []
    ks = (3, 8, 13) if not quick else (4, 9)
    for sphere in (False, True):
        for sep in (12.0, 20.0):
            for k in ks:
                for rep in range(1 if quick else 2):
                    grid.append(dict(k=k, separation=sep, imbalance=10.0, sphere=sphere))
    n = 3000
    k_range = (2, 20)
    results = []
    criteria = list(KS.K_CRITERIA) + ['bic:diag']
    hits = {c: 0 for c in criteria}
    secs = {c: 0.0 for c in criteria}
    for i, g in enumerate(grid):
        X, y = E.synthetic_features(n, g['k'], seed=100 + i, anisotropy=8.0,
                                    separation=g['separation'], imbalance=g['imbalance'],
                                    sphere=g['sphere'])
        lab, _, _ = C.cluster_features(X, g['k'], seed=0, scores=False)
        row = dict(g, n=n, v_measure_at_true_k=round(E.evaluate(y, lab)['v_measure'], 3))
        for crit in criteria:
            name, _, cov = crit.partition(':')
            KS.BIC_COVARIANCE = cov or 'full'
            t = time.time()
            kk, _ = KS.choose_k(X, k_range, criterion=name, seed=0)
            dt = time.time() - t
            row[crit] = kk
            row[crit + '_s'] = round(dt, 2)
            hits[crit] += int(kk == g['k'])
            secs[crit] += dt
        KS.BIC_COVARIANCE = 'full'
        results.append(row)
        print(json.dumps(row), flush=True)
    return summarise_auto_k({'n_sets': len(grid), 'k_range': list(k_range), 'items_per_set': n,
                             'anisotropy': 8.0, 'hits': hits,
                             'seconds_total': {c: round(s, 1) for c, s in secs.items()},
                             'sets': results})


def summarise_auto_k(res, well=0.99):
    """Add hits on the sets that k-means itself separates at the true k (V >= ``well``)."""
    sets = [r for r in res['sets'] if r['v_measure_at_true_k'] >= well]
    crits = [c for c in res['hits']]
    res['well_separated'] = {
        'definition': 'V-measure of k-means at the true k >= %.2f' % well, 'n_sets': len(sets),
        'hits': {c: sum(int(r[c] == r['k']) for r in sets) for c in crits},
        'mean_abs_k_error': {c: round(float(np.mean([abs(r[c] - r['k']) for r in sets])), 2)
                             for c in crits} if sets else None}
    res['mean_abs_k_error_all'] = {c: round(float(np.mean([abs(r[c] - r['k'])
                                                           for r in res['sets']])), 2)
                                   for c in crits}
    return res


def bench_auto_k_time(n=10000):
    X, y = E.synthetic_features(n, 10, seed=5, separation=20.0, anisotropy=8.0, imbalance=10.0)
    t = time.time()
    k, curve = KS.choose_k(X, (2, 20), seed=0)
    return {'n': n, 'true_k': 10, 'chosen_k': k, 'criterion': curve['method'], 'k_range': [2, 20],
            'data': 'synthetic_features separation 20, anisotropy 8, imbalance 10',
            'items_used': curve['n_used'], 'seconds': round(time.time() - t, 2)}


def conditions():
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import sklearn
    return {'cpu_count': os.cpu_count(), 'load_average_1_5_15': load,
            'platform': platform.platform(), 'python': platform.python_version(),
            'numpy': np.__version__, 'sklearn': sklearn.__version__,
            'note': 'shared 2-core machine; colleagues run jobs at the same time, so '
                    'timings are noisy (see load average)'}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=1_000_000)
    ap.add_argument('--k', type=int, default=20)
    ap.add_argument('--parts', nargs='+', default=['scale', 'switch', 'auto_k_time', 'auto_k'])
    ap.add_argument('--variants', nargs='+',
                    default=['cli@0', 'ours@0', 'ours@1', 'ours@2', 'ours:20000:3@0', 'ours:100000:1@0',
                             'minibatch_kmeans@0', 'reference_full_kmeans@0',
                             'reference_full_kmeans@1'])
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_cluster.json'))
    ap.add_argument('--child')
    ap.add_argument('--npy')
    ap.add_argument('--labels')
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.npy, a.k, a.labels)))
        return
    res = {'conditions_start': conditions(),
           'constants': {'FULL_FIT_MAX': C.FULL_FIT_MAX, 'FIT_SAMPLE': C.FIT_SAMPLE,
                         'REFINE_STEPS': C.REFINE_STEPS, 'N_INIT': C.N_INIT,
                         'K_SAMPLE': KS.K_SAMPLE, 'DEFAULT_K_CRITERION': KS.DEFAULT_K_CRITERION}}
    if os.path.isfile(a.out):   # keep parts not rerun
        with open(a.out) as f:
            old = json.load(f)
        res = dict(old, **res)
    parts = {'scale': lambda: bench_scale(a.n, a.k, a.variants),
             'switch': lambda: {'rows': bench_switch()},
             'auto_k_time': bench_auto_k_time,
             'auto_k': lambda: bench_auto_k(a.quick)}
    for name in a.parts:
        before = conditions()
        res[name] = parts[name]()
        res[name]['conditions'] = {'load_before': before['load_average_1_5_15'],
                                   'load_after': conditions()['load_average_1_5_15']}
        print(name, json.dumps(res[name])[:300], flush=True)
    res['conditions_end'] = conditions()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    tmp = a.out + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, a.out)
    print('wrote', a.out)


if __name__ == '__main__':
    main()
