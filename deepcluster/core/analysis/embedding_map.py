"""The 2-D map of the features that users explore and select from.

  compute_map(X, method, seed, max_points) -> EmbeddingMap: every item's (x, y)
      and which items were embedded ("drawn"); beyond ``max_points`` items a
      seeded random subsample is embedded and every other item is placed at the
      mean position of its nearest embedded neighbours in feature space, so a
      polygon on the map selects all items, drawn or not.
  cached_map(X, cache_dir, ...) -> the same, computed once and kept in
      ``cache_dir`` (an .npz named by method, checked against the features)
  write_map_csv / read_map_csv: map.csv (file,x,y,cluster[,truth],drawn), what
      ``cluster --plots`` writes and ``deepcluster select`` reads.

Methods: 'tsne' (openTSNE when installed, else scikit-learn's t-SNE), 'umap'
(umap-learn), 'pca' (fast, linear). No Scipion, no pyplot.
"""
import contextlib
import csv
import hashlib
import logging
import os
import time

import numpy as np

from deepcluster.core import DeepClusterError

log = logging.getLogger(__name__)

MAP_METHODS = ('tsne', 'umap', 'pca')
METHOD_NAMES = {'tsne': 't-SNE', 'umap': 'UMAP', 'pca': 'PCA'}
MAX_POINTS = 5000        # embedded items at most (t-SNE of 5000 on a CPU: ~30 s with openTSNE)
PLACE_NEIGHBOURS = 5     # items beyond the subsample: mean position of this many neighbours


class EmbeddingMap:
    """``xy``: N x 2 map positions (float32) of every item; ``drawn``: sorted
    indices of the items that were embedded (the rest were placed);
    ``method``: 'tsne' | 'umap' | 'pca' (what ran: 'tsne' may fall back to 'pca'
    for fewer than 5 items); ``seconds``: the computing time."""

    def __init__(self, xy, drawn, method, seconds=0.0):
        self.xy = np.asarray(xy, dtype=np.float32)
        self.drawn = np.asarray(drawn, dtype=np.int64)
        self.method = method
        self.seconds = float(seconds)

    @property
    def n(self):
        return len(self.xy)

    def describe(self):
        name = METHOD_NAMES.get(self.method, self.method)
        if len(self.drawn) < self.n:
            return '%s of %d random of %d items (the others placed by their nearest neighbours)' \
                % (name, len(self.drawn), self.n)
        return '%s of %d items' % (name, self.n)


def _check(X):
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise DeepClusterError('2-D map needs a non-empty 2-D feature array, got shape %s'
                               % (X.shape,))
    if not np.isfinite(X).all():
        raise DeepClusterError('2-D map: the features hold NaN or infinite values')
    return X


def pca_2d(Xs):
    """The first two principal components (zero-padded when there are fewer)."""
    Xc = Xs - Xs.mean(0)
    if Xs.shape[1] >= 2 and len(Xs) >= 2:
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
        Y = Xc @ vt[:2].T
        if Y.shape[1] < 2:
            Y = np.c_[Y, np.zeros(len(Y))]
        return Y
    return np.c_[Xc[:, :1], np.zeros(len(Xc))]


def _jitter(Xs, seed):
    """Identical rows give zero distances that t-SNE/UMAP handle badly: a tiny
    seeded jitter (1e-4 of the features' spread) keeps them apart."""
    scale = float(Xs.std()) or 1.0
    return Xs + np.random.default_rng(seed).normal(0, 1e-4 * scale, Xs.shape)


def _threads(n):
    # one thread for small sets: OpenMP workers spin-wait on a busy machine
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1) if n <= 2000 else contextlib.nullcontext()


def _tsne(Xs, seed):
    perplexity = float(min(30.0, (len(Xs) - 1) / 3.0))
    try:
        from openTSNE import TSNE
    except ImportError:
        TSNE = None
    with _threads(len(Xs)):
        if TSNE is not None:
            return np.asarray(TSNE(n_components=2, perplexity=perplexity, initialization='pca',
                                   random_state=seed, n_jobs=1 if len(Xs) <= 2000 else -1,
                                   verbose=False).fit(Xs))
        from sklearn.manifold import TSNE as SkTSNE
        return SkTSNE(n_components=2, perplexity=perplexity, init='pca',
                      random_state=seed).fit_transform(Xs)


def _umap(Xs, seed):
    try:
        import umap
    except ImportError:
        raise DeepClusterError('UMAP needs the umap-learn package (pip install umap-learn); '
                               'use t-SNE or PCA instead')
    with _threads(len(Xs)):
        return umap.UMAP(n_components=2, n_neighbors=int(min(15, len(Xs) - 1)),
                         random_state=seed, n_jobs=1).fit_transform(Xs)


def place_all(X, Y, drawn, k=PLACE_NEIGHBOURS):
    """Map positions of all N items from those of the ``drawn`` ones (``Y``, in
    ``drawn`` order): each other item at the mean position of its ``k`` nearest
    drawn neighbours in feature space."""
    X = np.asarray(X, dtype=np.float32)
    drawn = np.asarray(drawn, dtype=np.int64)
    xy = np.zeros((len(X), 2), np.float32)
    xy[drawn] = Y
    rest = np.setdiff1d(np.arange(len(X)), drawn)
    if len(rest):
        from sklearn.neighbors import NearestNeighbors
        nn = NearestNeighbors(n_neighbors=min(k, len(drawn))).fit(X[drawn])
        for a in range(0, len(rest), 65536):
            part = rest[a:a + 65536]
            _, nb = nn.kneighbors(X[part])
            xy[part] = np.asarray(Y, np.float32)[nb].mean(axis=1)
    return xy


def compute_map(X, method='tsne', seed=0, max_points=MAX_POINTS):
    """The 2-D map of the features ``X`` (N x D): an EmbeddingMap."""
    X = _check(X)
    method = str(method).lower()
    if method not in MAP_METHODS:
        raise DeepClusterError('2-D map method %r: use one of %s' % (method, ', '.join(MAP_METHODS)))
    t0 = time.time()
    n = len(X)
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    Xs = X[drawn].astype(np.float64)
    if method != 'pca' and len(Xs) < 5:
        method = 'pca'          # too few items for a neighbourhood embedding
    if method == 'tsne':
        Y = _tsne(_jitter(Xs, seed), seed)
    elif method == 'umap':
        Y = _umap(_jitter(Xs, seed), seed)
    else:
        Y = pca_2d(Xs)
    xy = place_all(X, Y, drawn)
    m = EmbeddingMap(xy, drawn, method, time.time() - t0)
    log.info('2-D map: %s in %.1f s', m.describe(), m.seconds)
    return m


def fingerprint(X, method, seed, max_points):
    h = hashlib.sha1(np.ascontiguousarray(X, dtype=np.float32).tobytes())
    h.update(('%s %s %s' % (method, seed, max_points)).encode())
    return h.hexdigest()


def cached_map(X, cache_dir, method='tsne', seed=0, max_points=MAX_POINTS):
    """compute_map, kept in ``cache_dir``/map_<method>.npz: recomputed only when
    the features or the parameters change. Returns (EmbeddingMap, was it cached)."""
    X = _check(X)
    fn = os.path.join(cache_dir, 'map_%s.npz' % method)
    key = fingerprint(X, method, seed, max_points)
    if os.path.exists(fn):
        try:
            with np.load(fn, allow_pickle=False) as z:
                if str(z['key']) == key:
                    return EmbeddingMap(z['xy'], z['drawn'], str(z['method']),
                                        float(z['seconds'])), True
        except (OSError, KeyError, ValueError):
            pass                # unreadable or old cache: recompute
    m = compute_map(X, method, seed, max_points)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = fn + '.tmp%d.npz' % os.getpid()
    np.savez(tmp, xy=m.xy, drawn=m.drawn, method=m.method, seconds=m.seconds, key=key)
    os.replace(tmp, fn)
    return m, False


# ------------------------------------------------------------------ map.csv
MAP_COLUMNS = ['file', 'x', 'y', 'cluster', 'truth', 'drawn']


def write_map_csv(path, files, xy, clusters, truth=None, drawn=None, method=''):
    """map.csv: one row per item (file, x, y, cluster, [truth,] drawn = 1 if the
    item was embedded, 0 if placed by its neighbours). Written atomically."""
    from deepcluster.core.inference.volumes import atomic_path
    xy = np.asarray(xy)
    if not len(files) == len(xy) == len(clusters):
        raise DeepClusterError('map.csv: %d files, %d positions, %d clusters'
                               % (len(files), len(xy), len(clusters)))
    is_drawn = np.ones(len(xy), bool)
    if drawn is not None:
        is_drawn[:] = False
        is_drawn[np.asarray(drawn, dtype=np.int64)] = True
    cols = [c for c in MAP_COLUMNS if c != 'truth' or truth is not None]
    with atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(cols)
            for i, fn in enumerate(files):
                row = [fn, '%.5g' % xy[i, 0], '%.5g' % xy[i, 1], str(clusters[i])]
                if truth is not None:
                    row.append(str(truth[i]))
                w.writerow(row + [int(is_drawn[i])])
    return path


def read_map_csv(path):
    """Return {'file': [...], 'xy': N x 2, 'cluster': [...] (str), 'truth': [...] or None,
    'drawn': bool array} from a map.csv."""
    if not os.path.isfile(path):
        raise DeepClusterError('%s: no such map file (cluster --plots DIR writes DIR/map.csv)'
                               % path)
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = {'file', 'x', 'y', 'cluster'} - set(reader.fieldnames or [])
        if missing:
            raise DeepClusterError('%s: not a map.csv (missing columns %s)'
                                   % (path, ', '.join(sorted(missing))))
        rows = list(reader)
    if not rows:
        raise DeepClusterError('%s: the map has no items' % path)
    try:
        xy = np.array([[float(r['x']), float(r['y'])] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise DeepClusterError('%s: a position is not a number (%s)' % (path, e))
    has_truth = 'truth' in rows[0]
    return {'file': [r['file'] for r in rows], 'xy': xy,
            'cluster': [r['cluster'] for r in rows],
            'truth': [r['truth'] for r in rows] if has_truth else None,
            'drawn': np.array([r.get('drawn', '1') != '0' for r in rows])}
