"""Group feature vectors into classes; choose k; score against ground truth.

Paper sections 4.3-4.4: k-means on the 32-d CNN features, scored with
homogeneity, completeness and V-measure (Rosenberg & Hirschberg 2007) over a
range of k (Fig. 3C/D) and a contingency matrix (Fig. 4B).

Python API (labels are 0-based here; the CLI writes them 1-based, as Scipion does):
  cluster_features(X, k, method='kmeans', seed=0) -> (labels, distances, info)
  class_representatives(X, labels, centroids) -> index of the member nearest each centroid
The choice of k is in k_selection.py, scores against ground truth in evaluation.py.

Clusters are numbered by size: cluster 0 (class 1 in the CLI) is the largest.

k-means at scale. Up to FULL_FIT_MAX (200,000) items, scikit-learn's KMeans
runs on all of them with N_INIT (10) restarts. Above that, the restarts run on
a seeded random subsample of FIT_SAMPLE (100,000) items, the REFINE_TOP (3)
best are polished by Lloyd iterations on all items (in memory up to 1 GiB of
features, else REFINE_STEPS chunked passes over a memory map), and the one
with the lowest full-data inertia wins. Measured (benchmarks/bench_cluster.py,
2-core CPU shared with other jobs): 1,000,000 x 32 into 20 overlapping
anisotropic clusters takes 5-6 s (peak RSS 0.52 GB; the whole command with CSV
in and out 17 s, 0.82 GB) against 21-32 s for KMeans with 10 restarts on all
items; inertia within -0.2..+0.2% of the best full run and ARI 0.88-0.93 to it,
as close as two seeds of the full run are to each other (ARI 0.94);
MiniBatchKMeans is 2% worse in inertia (V-measure 0.85 vs 0.90-0.94). The
switch-over is where the two cost the same: at 200,000 items 11.5 s (full)
vs 11.0 s (ours), at 400,000 16.6 s vs 13.2 s, at 100,000 ours is slower.
"""
import logging
import time
import warnings

import numpy as np

from deepcluster.core import DeepClusterError

log = logging.getLogger(__name__)

METHODS = ('kmeans', 'gmm', 'agglomerative', 'hdbscan', 'spectral')
FULL_FIT_MAX = 200_000      # above this k-means fits a subsample, then refines on all
FIT_SAMPLE = 100_000        # subsample size for the large-N restarts
REFINE_TOP = 3              # best subsample restarts polished on all items
REFINE_MAX_ITER = 100       # Lloyd iterations of that polish (in memory)
IN_MEMORY_MAX = 2 ** 30     # features up to 1 GiB are loaded; beyond: chunked Lloyd
REFINE_STEPS = 10           # chunked full-data Lloyd passes (beyond IN_MEMORY_MAX)
CHUNK = 65_536              # rows per chunk in full-data passes
N_INIT = 10                 # k-means restarts
AGGLO_MAX = 10_000          # agglomerative (O(N^2)) fits at most this many items
HDBSCAN_MAX = 20_000        # hdbscan fits at most this many items
SPECTRAL_MAX = 20_000       # spectral clustering fits at most this many items (~5 s)
SPECTRAL_NEIGHBOURS = 10    # its graph: each item linked to its 10 nearest neighbours
SCORE_SAMPLE = 5_000        # internal scores (silhouette...) on at most this many items
SINGLE_THREAD_MAX = 20_000  # below this many items, one thread (see _threads)


# ------------------------------------------------------------------ checking
def check_features(X, name='features'):
    """Return X as a 2-D float32 array (memory maps are kept, not copied); raise on bad input."""
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    if X.ndim != 2:
        raise DeepClusterError('%s: expected a 2-D array (items x features), got shape %s'
                               % (name, X.shape))
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DeepClusterError('%s: empty feature array (shape %s)' % (name, X.shape))
    if X.dtype.kind not in 'fiu':
        raise DeepClusterError('%s: features must be numbers, got dtype %s' % (name, X.dtype))
    for a in range(0, len(X), CHUNK * 4):
        c = np.asarray(X[a:a + CHUNK * 4])
        if not np.isfinite(c).all():
            bad = a + int(np.nonzero(~np.isfinite(c).all(axis=1))[0][0])
            raise DeepClusterError('%s: row %d holds NaN or infinite values' % (name, bad))
    if X.dtype != np.float32 and not isinstance(X, np.memmap):
        X = X.astype(np.float32)
    return X


def check_k(k, n, name='k'):
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise DeepClusterError('%s=%r: must be a whole number or "auto"' % (name, k))
    if k_int != k and not isinstance(k, str):
        raise DeepClusterError('%s=%r: must be a whole number' % (name, k))
    if k_int < 1:
        raise DeepClusterError('%s=%d: must be at least 1' % (name, k_int))
    if k_int > n:
        raise DeepClusterError('%s=%d: more clusters than items (%d)' % (name, k_int, n))
    return k_int


def _threads(n):
    """One BLAS/OpenMP thread for small problems, all of them for large ones.

    Measured: 20 k-means fits of 480 x 32 items took 0.75 s with the default
    threads on a busy 2-core machine and 0.035 s with one (OpenMP workers
    spin-wait when the cores are shared); choose_k and sweep_k make many
    such small fits.
    """
    import contextlib
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1) if n <= SINGLE_THREAD_MAX else contextlib.nullcontext()


def _subsample(n, m, seed):
    """Sorted indices of a seeded random subset of size min(n, m)."""
    if n <= m:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


# ------------------------------------------------------------ chunked passes
def assign(X, centroids, chunk=CHUNK):
    """Nearest centroid of every row and its Euclidean distance, in chunks."""
    C = np.asarray(centroids, dtype=np.float64)
    c2 = (C ** 2).sum(1)
    labels = np.empty(len(X), dtype=np.int64)
    dist = np.empty(len(X), dtype=np.float32)
    for a in range(0, len(X), chunk):
        x = np.asarray(X[a:a + chunk], dtype=np.float64)
        d2 = (x ** 2).sum(1)[:, None] - 2.0 * x @ C.T + c2[None, :]
        j = d2.argmin(1)
        labels[a:a + len(x)] = j
        dist[a:a + len(x)] = np.sqrt(np.maximum(d2[np.arange(len(x)), j], 0.0))
    return labels, dist


def _means(X, labels, k, chunk=CHUNK, fallback=None):
    """Per-cluster means (chunked); an empty cluster keeps ``fallback``'s row (or NaN)."""
    sums = np.zeros((k, X.shape[1]), np.float64)
    counts = np.zeros(k, np.int64)
    for a in range(0, len(X), chunk):
        x = np.asarray(X[a:a + chunk], dtype=np.float64)
        lab = labels[a:a + len(x)]
        ok = lab >= 0
        onehot = np.zeros((len(x), k))
        onehot[np.nonzero(ok)[0], lab[ok]] = 1.0
        sums += onehot.T @ x
        counts += np.bincount(lab[ok], minlength=k)
    means = np.full_like(sums, np.nan)
    nz = counts > 0
    means[nz] = sums[nz] / counts[nz, None]
    if fallback is not None:
        means[~nz] = np.asarray(fallback)[~nz]
    return means, counts


def _lloyd_refine(X, centroids, steps):
    C = np.asarray(centroids, np.float64)
    for _ in range(steps):
        labels, _ = assign(X, C)
        C_new, _ = _means(X, labels, len(C), fallback=C)
        shift = float(np.abs(C_new - C).max())
        C = C_new
        if shift < 1e-7:
            break
    return C


# ----------------------------------------------------------------- clustering
def _kmeans(X, k, seed, n_init):
    from sklearn.cluster import KMeans
    n = len(X)
    if n <= FULL_FIT_MAX:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(X, np.float32))
        return km.cluster_centers_.astype(np.float64), {'mode': 'full', 'n_fit': n,
                                                        'n_init': n_init, 'iterations': int(km.n_iter_)}
    # restarts on a subsample; the best few polished on all items; the best of those wins
    idx = _subsample(n, FIT_SAMPLE, seed)
    Xs = np.asarray(X[idx], np.float32)
    starts = []
    for r in range(n_init):
        km = KMeans(n_clusters=k, n_init=1, random_state=seed + r).fit(Xs)
        starts.append((km.inertia_, r, km.cluster_centers_))
    starts.sort(key=lambda t: t[0])
    in_memory = X.nbytes <= IN_MEMORY_MAX
    Xa = np.asarray(X, np.float32) if in_memory else X
    best = None
    for _, r, c0 in starts[:REFINE_TOP]:
        if in_memory:
            km = KMeans(n_clusters=k, init=c0, n_init=1, max_iter=REFINE_MAX_ITER).fit(Xa)
            cand = (float(km.inertia_), km.cluster_centers_.astype(np.float64), int(km.n_iter_))
        else:
            c = _lloyd_refine(Xa, c0, REFINE_STEPS)
            _, d = assign(Xa, c)
            cand = (float(np.sum(d.astype(np.float64) ** 2)), c, REFINE_STEPS)
        if best is None or cand[0] < best[0]:
            best = cand
    how = ('scikit-learn Lloyd' if in_memory else '%d chunked Lloyd passes' % REFINE_STEPS)
    return best[1], {'mode': '%d restarts on a %d subsample, best %d refined on all (%s)'
                             % (n_init, len(idx), min(REFINE_TOP, n_init), how),
                     'n_fit': len(idx), 'n_init': n_init, 'refine_iterations': best[2]}


def _gmm(X, k, seed, n_init):
    from sklearn.mixture import GaussianMixture
    idx = _subsample(len(X), FIT_SAMPLE, seed)
    gm = GaussianMixture(n_components=k, covariance_type='full', n_init=max(1, min(n_init, 3)),
                         reg_covar=1e-5, random_state=seed).fit(np.asarray(X[idx], np.float64))
    labels = np.empty(len(X), np.int64)
    for a in range(0, len(X), CHUNK):
        labels[a:a + CHUNK] = gm.predict(np.asarray(X[a:a + CHUNK], np.float64))
    return labels, {'mode': 'full' if len(idx) == len(X) else 'subsample fit + predict all',
                    'n_fit': len(idx), 'covariance': 'full', 'bic_fit': float(
                        gm.bic(np.asarray(X[idx], np.float64)))}


def _agglomerative(X, k, seed):
    from sklearn.cluster import AgglomerativeClustering
    idx = _subsample(len(X), AGGLO_MAX, seed)
    lab = AgglomerativeClustering(n_clusters=k, linkage='ward').fit_predict(np.asarray(X[idx]))
    if len(idx) == len(X):
        return lab.astype(np.int64), {'mode': 'full', 'n_fit': len(X), 'linkage': 'ward'}
    C, _ = _means(np.asarray(X[idx]), lab, k)
    labels, _ = assign(X, C)
    return labels, {'mode': 'subsample fit + nearest centroid', 'n_fit': len(idx), 'linkage': 'ward'}


def _spectral(X, k, seed, n_init):
    """k-means on the leading eigenvectors of the 10-nearest-neighbour graph: it
    follows the neighbourhoods of the features, so a class spread wider than its
    neighbours is not split, nor are two tight ones merged, as k-means does
    (bench_quality.py --scenarios methods: V-measure -0.01 to +0.03 against k-means)."""
    from sklearn.cluster import SpectralClustering
    idx = _subsample(len(X), SPECTRAL_MAX, seed)
    Xs = np.asarray(X[idx], np.float64)
    nn = min(SPECTRAL_NEIGHBOURS, len(idx) - 1)
    info = {'mode': 'full', 'n_fit': len(idx), 'n_neighbors': nn}
    if k == 1 or nn < 1:
        return np.zeros(len(X), np.int64), info
    if k >= len(idx) < len(X):
        raise DeepClusterError('spectral: k=%d clusters from the %d items it fits; use kmeans'
                               % (k, len(idx)))
    if k >= len(idx):                   # one item per cluster (the graph has no more eigenvectors)
        lab = np.arange(len(idx))
    else:
        with warnings.catch_warnings():     # a graph in several pieces is what clusters are
            warnings.filterwarnings('ignore', message='Graph is not fully connected')
            warnings.filterwarnings('ignore', message='k >= N')     # tiny sets: a dense solver
            lab = SpectralClustering(n_clusters=k, affinity='nearest_neighbors', n_neighbors=nn,
                                     n_init=n_init, random_state=seed).fit_predict(Xs)
    if len(idx) == len(X):
        return lab.astype(np.int64), info
    C, _ = _means(Xs, lab, k)
    labels, _ = assign(X, C)
    info['mode'] = 'subsample fit + nearest centroid'
    return labels, info


def _hdbscan(X, seed, min_cluster_size=None):
    from sklearn.cluster import HDBSCAN
    idx = _subsample(len(X), HDBSCAN_MAX, seed)
    Xs = np.asarray(X[idx], np.float64)
    mcs = min_cluster_size or max(5, len(idx) // 100)
    lab = HDBSCAN(min_cluster_size=mcs, copy=True).fit_predict(Xs)
    k = int(lab.max()) + 1
    info = {'mode': 'full', 'n_fit': len(idx), 'min_cluster_size': mcs}
    if k == 0:
        raise DeepClusterError('hdbscan found no clusters in %d items (all noise); use kmeans'
                               % len(X))
    if len(idx) == len(X):
        return lab.astype(np.int64), info
    C, _ = _means(Xs, lab, k)
    labels, dist = assign(X, C)
    # beyond the farthest fitted member of its cluster, an item counts as noise
    _, dfit = assign(Xs, C)
    radius = np.array([dfit[lab == j].max() for j in range(k)])
    labels[dist > radius[labels]] = -1
    info['mode'] = 'subsample fit + nearest centroid within cluster radius'
    return labels, info


def _distances(X, labels, C):
    """Euclidean distance of each item to its cluster's centroid (NaN for noise)."""
    dist = np.full(len(X), np.nan, np.float32)
    for a in range(0, len(X), CHUNK):
        x = np.asarray(X[a:a + CHUNK], np.float64)
        lab = labels[a:a + len(x)]
        m = np.nonzero(lab >= 0)[0]
        dist[a + m] = np.sqrt(((x[m] - C[lab[m]]) ** 2).sum(1))
    return dist


def _relabel_by_size(labels, k):
    """Renumber clusters so 0 is the largest (ties: lower old id first); noise (-1) stays."""
    counts = np.bincount(labels[labels >= 0], minlength=k)
    order = np.argsort(-counts, kind='stable')
    new = np.empty(k, np.int64)
    new[order] = np.arange(k)
    out = labels.copy()
    out[labels >= 0] = new[labels[labels >= 0]]
    return out, order


def internal_scores(X, labels, seed=0, sample=SCORE_SAMPLE):
    """Silhouette, Calinski-Harabasz, Davies-Bouldin on a seeded subsample (None if < 2 clusters)."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    keep = np.nonzero(labels >= 0)[0]
    idx = keep[_subsample(len(keep), sample, seed)]
    Xs, ls = np.asarray(X[idx], np.float64), labels[idx]
    if len(np.unique(ls)) < 2 or len(np.unique(ls)) >= len(ls):
        return {'silhouette': None, 'calinski_harabasz': None, 'davies_bouldin': None,
                'n_scored': int(len(idx))}
    return {'silhouette': float(silhouette_score(Xs, ls)),
            'calinski_harabasz': float(calinski_harabasz_score(Xs, ls)),
            'davies_bouldin': float(davies_bouldin_score(Xs, ls)),
            'n_scored': int(len(idx))}


def cluster_features(X, k, method='kmeans', seed=0, n_init=N_INIT, scores=True):
    """Cluster the rows of X into k groups.

    Returns (labels 0-based, numbered by size with 0 the largest; -1 = noise,
    hdbscan only), distances (float32, each item's Euclidean distance to its
    cluster's centroid; NaN for noise) and info (JSON-ready: k, method, seed, n,
    sizes, centroids, centroid_distances, inertia, fit details, internal scores).
    For every method the centroid is the mean of the cluster's members (the
    k-means centres for k-means). ``k`` is ignored by hdbscan, which finds its
    own number of clusters.
    """
    X = check_features(X)
    with _threads(len(X)):
        return _cluster(X, k, method, seed, n_init, scores)


def _cluster(X, k, method, seed, n_init, scores):
    t0 = time.time()
    n = len(X)
    method = (method or 'kmeans').lower()
    if method not in METHODS:
        raise DeepClusterError('method %r: choose one of %s' % (method, ', '.join(METHODS)))
    if method != 'hdbscan':
        k = check_k(k, n)
    if method == 'kmeans':
        C, fit = _kmeans(X, k, seed, n_init)
        labels, dist = assign(X, C)
    else:
        if method == 'gmm':
            labels, fit = _gmm(X, k, seed, n_init)
        elif method == 'agglomerative':
            labels, fit = _agglomerative(X, k, seed)
        elif method == 'spectral':
            labels, fit = _spectral(X, k, seed, n_init)
        else:
            labels, fit = _hdbscan(X, seed)
            k = int(labels.max()) + 1
        C, _ = _means(X, labels, k)
        dist = _distances(X, labels, C)
    labels, order = _relabel_by_size(labels, k)
    C = C[order]
    ok = labels >= 0
    sizes = np.bincount(labels[ok], minlength=k)
    cd = np.sqrt(np.maximum(((C[:, None, :] - C[None, :, :]) ** 2).sum(-1), 0.0))
    info = {'k': int(k), 'method': method, 'seed': int(seed), 'n': int(n),
            'n_features': int(X.shape[1]), 'sizes': sizes.tolist(),
            'n_noise': int((~ok).sum()),
            'inertia': float(np.sum(dist[ok].astype(np.float64) ** 2)),
            'mean_distance': [float(v / c) if c else None for v, c in zip(
                np.bincount(labels[ok], weights=dist[ok], minlength=k), sizes)],
            'centroids': C.round(6).tolist(), 'centroid_distances': cd.round(6).tolist(),
            'fit': fit}
    if scores:
        info['scores'] = internal_scores(X, labels, seed)
    info['seconds'] = round(time.time() - t0, 3)
    log.debug('%s: %d items into %d clusters in %.1f s (%s)', method, n, k, info['seconds'],
              fit['mode'])
    return labels, dist, info


def class_representatives(X, labels, centroids):
    """Index of the member nearest each centroid (-1 for an empty cluster)."""
    C = np.asarray(centroids, np.float64)
    labels = np.asarray(labels)
    best = np.full(len(C), np.inf)
    rep = np.full(len(C), -1, np.int64)
    for a in range(0, len(X), CHUNK):
        x = np.asarray(X[a:a + CHUNK], np.float64)
        lab = labels[a:a + len(x)]
        m = np.nonzero(lab >= 0)[0]
        d = ((x[m] - C[lab[m]]) ** 2).sum(1)
        for j in np.unique(lab[m]):
            s = lab[m] == j
            i = int(np.argmin(np.where(s, d, np.inf)))
            if d[i] < best[j]:
                best[j], rep[j] = d[i], a + m[i]
    return rep
