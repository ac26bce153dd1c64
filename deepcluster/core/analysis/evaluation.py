"""Score a clustering against known classes (paper 4.3, Fig. 3C/D, Fig. 4B),
and make features with known classes for tests and benchmarks.

  evaluate(truth, pred) -> dict of metrics + contingency table
  sweep_k(X, truth, ks, method='kmeans', seed=0) -> [per-k metrics]
  synthetic_features(n, k, ...) -> (X, truth)
"""
import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis.cluster import _subsample, _threads, check_features, cluster_features

SWEEP_SAMPLE = 20_000       # metric sweep over k on at most this many items


def evaluate(truth, pred):
    """External scores of a clustering against true classes (paper 4.3).

    Returns {'n', 'homogeneity', 'completeness', 'v_measure', 'ari', 'nmi',
    'contingency': {'classes', 'clusters', 'matrix' (rows = classes)}}. Items
    with pred == -1 (noise) count as a cluster of their own.
    """
    from sklearn import metrics
    from deepcluster.core.analysis.plots import contingency_table
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if len(truth) != len(pred):
        raise DeepClusterError('truth has %d labels but the clustering %d' % (len(truth), len(pred)))
    if len(truth) == 0:
        raise DeepClusterError('no items to evaluate')
    t = truth.astype(str)
    h, c, v = metrics.homogeneity_completeness_v_measure(t, pred)
    m, classes, clusters = contingency_table(t, pred)
    return {'n': int(len(t)), 'homogeneity': float(h), 'completeness': float(c),
            'v_measure': float(v), 'ari': float(metrics.adjusted_rand_score(t, pred)),
            'nmi': float(metrics.normalized_mutual_info_score(t, pred)),
            'contingency': {'classes': [str(x) for x in classes],
                            'clusters': [int(x) if np.asarray(x).dtype.kind in 'iu' else str(x)
                                         for x in clusters],
                            'matrix': m.tolist()}}


def sweep_k(X, truth, ks, method='kmeans', seed=0, sample=SWEEP_SAMPLE, n_init=4):
    """Homogeneity, completeness, V-measure, ARI, NMI for each k (paper Fig. 3C/D).

    Runs on a seeded subsample of at most ``sample`` items with ``n_init``
    restarts per k. Returns [{'k', 'homogeneity', 'completeness', 'v_measure',
    'ari', 'nmi', 'inertia'}...] (plots.plot_metrics_vs_k draws it).
    """
    X = check_features(X)
    truth = np.asarray(truth)
    if len(truth) != len(X):
        raise DeepClusterError('truth has %d labels but there are %d feature rows'
                               % (len(truth), len(X)))
    idx = _subsample(len(X), sample, seed)
    Xs, ts = np.asarray(X[idx], np.float32), truth[idx]
    out = []
    with _threads(len(Xs)):
        for k in ks:
            if k > len(Xs):
                break
            lab, _, info = cluster_features(Xs, k, method, seed, n_init=n_init, scores=False)
            e = evaluate(ts, lab)
            e.pop('contingency')
            e.update(k=int(info['k']), inertia=info['inertia'])
            out.append(e)
    return out


def synthetic_features(n, k, dim=32, seed=0, separation=8.0, anisotropy=4.0, imbalance=5.0,
                       sphere=False):
    """Gaussian clusters with known labels, for tests, benchmarks and demos.

    Each cluster is a randomly rotated Gaussian whose axis standard deviations
    spread log-uniformly over [1/sqrt(a), sqrt(a)] (a = ``anisotropy``; about 1
    on average). Centres are random with typical pairwise distance
    ``separation`` (in those noise units: 8 is well separated, 4 overlaps).
    Sizes are geometric: the largest is ``imbalance`` times the smallest.
    ``sphere`` L2-normalises the rows afterwards (features may be normalised
    embeddings; the clusters become caps on the hypersphere). Returns
    (X float32 n x dim, labels int 0..k-1), rows shuffled.
    """
    rng = np.random.default_rng(seed)
    w = float(imbalance) ** (-np.arange(k) / max(1, k - 1))
    sizes = np.maximum(1, np.floor(w / w.sum() * n).astype(int))
    sizes[0] += n - sizes.sum()
    centres = rng.normal(0, separation / np.sqrt(2.0 * dim), (k, dim))
    if sphere:   # keep the caps apart after normalisation: move the centres off the origin
        centres += rng.normal(0, 1, dim) * separation / np.sqrt(dim) * 2
    X = np.empty((n, dim), np.float32)
    y = np.empty(n, np.int64)
    a = 0
    for j, s in enumerate(sizes):
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        sd = np.sqrt(anisotropy) ** rng.uniform(-1, 1, dim)
        X[a:a + s] = centres[j] + (rng.normal(size=(s, dim)) * sd) @ q.T
        y[a:a + s] = j
        a += s
    if sphere:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return X[perm], y[perm]
