"""``python -m deepcluster cluster``: features.npy in, labels.csv (+ .json, figures) out.

The files side of clustering: reading the features and the CSV naming their rows,
matching ground-truth labels, writing labels atomically, the gallery of class
members; the algorithms are in ``cluster.py``.
"""
import json
import logging
import os

import numpy as np

from . import DeepClusterError
from .cluster import METHODS, N_INIT, check_features, check_k, class_representatives, cluster_features
from .evaluation import SWEEP_SAMPLE, evaluate, sweep_k
from .k_selection import DEFAULT_K_CRITERION, K_CRITERIA, choose_k

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------- files
def find_features_csv(npy):
    """The CSV naming each row's file: ``<stem>.csv`` beside the .npy, else ``features.csv``."""
    stem = os.path.splitext(npy)[0] + '.csv'
    if os.path.isfile(stem):
        return stem
    other = os.path.join(os.path.dirname(os.path.abspath(npy)), 'features.csv')
    return other if os.path.isfile(other) else None


def load_features(npy):
    """Return (features (memory-mapped if large), file names per row) from an embed output.

    Rows are named by the ``row,file`` CSV beside the .npy (see find_features_csv);
    without one they are named ``row0``, ``row1``... (a warning is logged).
    """
    import csv
    if not os.path.isfile(npy):
        raise DeepClusterError('%s: no such features file' % npy)
    try:
        X = np.load(npy, mmap_mode='r', allow_pickle=False)
    except Exception as e:
        raise DeepClusterError('%s: not a readable .npy array (%s)'
                               % (npy, str(e).splitlines()[0] if str(e) else type(e).__name__))
    X = check_features(X, npy)
    if X.nbytes <= 512 * 2 ** 20:
        X = np.ascontiguousarray(X, dtype=np.float32)
    csv_path = find_features_csv(npy)
    if csv_path is None:
        log.warning('%s: no features.csv beside it; rows are named row0, row1, ...', npy)
        return X, ['row%d' % i for i in range(len(X))]
    with open(csv_path, newline='') as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not {'row', 'file'} <= set(header):
            raise DeepClusterError('%s: expected a CSV with columns row,file' % csv_path)
        ir, jf = header.index('row'), header.index('file')
        rows, files = [], []
        try:
            for r in reader:
                if r:
                    rows.append(int(r[ir]))
                    files.append(r[jf])
        except (IndexError, ValueError):
            raise DeepClusterError('%s: line %d: expected a row number and a file name'
                                   % (csv_path, len(rows) + 2))
    if len(rows) != len(X):
        raise DeepClusterError('%s names %d rows but %s holds %d feature rows'
                               % (csv_path, len(rows), npy, len(X)))
    rows = np.asarray(rows)
    if not np.array_equal(rows, np.arange(len(X))):
        order = np.argsort(rows, kind='stable')
        if not np.array_equal(rows[order], np.arange(len(X))):
            raise DeepClusterError('%s: rows must be numbered 0..%d once each'
                                   % (csv_path, len(X) - 1))
        files = [files[i] for i in order]
    return X, files


def match_truth(files, truth_csv):
    """Per-row true labels (None where the truth file has no entry) from a labels.csv.

    Truth entries match input files by exact path, else by file name. A truth
    entry that names no input file is an error (a wrong truth file, most likely).
    """
    from .volumes import read_labels
    table = read_labels(truth_csv)
    index = {f: i for i, f in enumerate(files)}
    by_base = {}
    for i, f in enumerate(files):
        by_base.setdefault(os.path.basename(f), []).append(i)
    truth = [None] * len(files)
    for f, lab in table.items():
        if f in index:
            truth[index[f]] = lab
            continue
        hits = by_base.get(os.path.basename(f), [])
        if len(hits) == 1:
            truth[hits[0]] = lab
        elif len(hits) > 1:
            raise DeepClusterError('%s: %s matches %d input files by name; give full paths'
                                   % (truth_csv, f, len(hits)))
        else:
            raise DeepClusterError('%s: names %s, which is not among the %d input items'
                                   % (truth_csv, f, len(files)))
    return truth


def write_cluster_outputs(out_csv, files, labels, dist, summary):
    """labels.csv (file,label 1-based,distance) and <stem>.json, both atomically."""
    import csv
    from .volumes import atomic_path
    with atomic_path(out_csv) as tmp:
        with open(tmp, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label', 'distance'])
            for fn, lab, d in zip(files, (labels + 1).tolist(), dist.tolist()):
                w.writerow([fn, lab, '' if d != d else '%.6g' % d])
    js = os.path.splitext(out_csv)[0] + '.json'
    with atomic_path(js) as tmp:
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=1)
    return js


# ------------------------------------------------------------------------- CLI
def run(args):
    X, files = load_features(args.features)
    truth = None
    if args.truth:
        truth = match_truth(files, args.truth)
        n_true = sum(t is not None for t in truth)
        if n_true < len(files):
            log.warning('%s: labels %d of %d items; metrics use those %d', args.truth, n_true,
                        len(files), n_true)
    lo, hi = args.k_range
    curve = None
    if str(args.k).lower() == 'auto':
        if args.method == 'hdbscan':
            k = None
        else:
            k, curve = choose_k(X, (lo, hi), args.method, args.seed, criterion=args.k_criterion)
    else:
        k = check_k(args.k, len(X), '--k')
        if args.method == 'hdbscan':
            log.warning('hdbscan finds its own number of clusters; --k %d is not used', k)
    labels, dist, info = cluster_features(X, k, args.method, args.seed, n_init=args.n_init)
    log.info('%s: %d items into %d clusters in %.1f s (%s)', info['method'], info['n'], info['k'],
             info['seconds'], info['fit']['mode'])
    summary = dict(features=os.path.abspath(args.features), **info)
    summary['labels'] = 'cluster ids are 1-based (1 = largest cluster); 0 = noise (hdbscan)'
    summary['sizes'] = {str(j + 1): s for j, s in enumerate(info['sizes'])}
    if curve:
        summary['k_selection'] = curve
    rep = class_representatives(X, labels, info['centroids'])
    summary['representatives'] = {str(j + 1): (files[i] if i >= 0 else None)
                                  for j, i in enumerate(rep.tolist())}
    sweep = None
    if truth is not None:
        sel = np.array([t is not None for t in truth])
        t_sel = np.array([t for t in truth if t is not None])
        summary['metrics'] = evaluate(t_sel, labels[sel] + 1)
        ks = list(range(max(2, lo), min(hi, int(sel.sum())) + 1))
        Xt = X[np.nonzero(sel)[0]] if not sel.all() else X
        log.info('metrics for k = %d..%d (on at most %d items)', ks[0] if ks else 0,
                 ks[-1] if ks else 0, SWEEP_SAMPLE)
        sweep = sweep_k(Xt, t_sel, ks, 'kmeans' if args.method == 'hdbscan' else args.method,
                        args.seed)
        summary['sweep'] = sweep
        m = summary['metrics']
        log.info('V-measure %.3f (homogeneity %.3f, completeness %.3f), ARI %.3f on %d items',
                 m['v_measure'], m['homogeneity'], m['completeness'], m['ari'], m['n'])
    if args.plots:
        from . import plots
        log.info('figures into %s%s', args.plots, ' (t-SNE of up to %d items: a minute or two on '
                 'a CPU)' % plots.EMBED_MAX_POINTS if args.embedding == 'tsne' else '')
        t_all = None
        if truth is not None:
            t_all = np.array([t if t is not None else '(no label)' for t in truth])
        summary['plots'] = plots.write_cluster_report(
            args.plots, X, labels + 1, truth=t_all, sweep=sweep, curve=curve, seed=args.seed,
            gallery=_gallery(files, labels, dist),
            embedding=args.embedding, true_k=len(set(t_sel.tolist())) if truth is not None else None)
    js = write_cluster_outputs(args.out, files, labels, dist, summary)
    log.info('wrote %s and %s (%d clusters, sizes %s)', args.out, js, info['k'], info['sizes'])
    return summary


def _gallery(files, labels, dist, per_class=6):
    """{'class N (size)': central slices of its members nearest the centroid}, for
    the members whose volume files exist (rows may name other things)."""
    from .plots import central_slice
    from .volumes import read_volume
    out = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        idx = np.nonzero(labels == c)[0]
        idx = idx[np.argsort(dist[idx])][:per_class]
        slices = []
        for i in idx:
            if os.path.isfile(files[i]):
                try:
                    slices.append(central_slice(read_volume(files[i], check_finite=False)[0]))
                except DeepClusterError:
                    continue
        if slices:
            out['class %d: %d items' % (c + 1, int((labels == c).sum()))] = slices
    return out or None


def _k_arg(s):
    if s.lower() == 'auto':
        return 'auto'
    try:
        return int(s)
    except ValueError:
        raise DeepClusterError('--k %s: give a whole number or "auto"' % s)


def add_parser(subparsers):
    p = subparsers.add_parser(
        'cluster', help='group embedded subtomograms into classes (k-means by default)',
        description='Cluster the feature vectors written by "embed" and, given true labels, '
                    'score the classes (V-measure, homogeneity, completeness, ARI, NMI). '
                    'Writes labels.csv (file,label,distance; label = 1-based class id, '
                    '1 = largest) and a JSON summary beside it.')
    p.add_argument('features', help='features.npy (N x 32) from "embed"; the features.csv '
                                    'beside it names each row\'s file')
    p.add_argument('--k', default='auto', type=str,
                   help='number of clusters, or "auto" to choose it from the data (default)')
    p.add_argument('--out', required=True, help='output labels.csv (JSON summary beside it)')
    p.add_argument('--truth', help='labels.csv (file,label) with the true classes, for metrics')
    p.add_argument('--method', default='kmeans', choices=METHODS,
                   help='clustering algorithm (default kmeans, as in the paper; spectral: k-means '
                        'on the 10-nearest-neighbour graph of the features: V-measure -0.01 to +0.03 '
                        'against k-means on the held-out sets, +0.007 on average; hdbscan finds its '
                        'own number of clusters and marks '
                        'noise as class 0)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    p.add_argument('--n-init', type=int, default=N_INIT, help='k-means restarts (default %d)'
                   % N_INIT)
    p.add_argument('--k-range', type=int, nargs=2, default=(2, 20), metavar=('LOW', 'HIGH'),
                   help='k values tried by --k auto and by the metric sweep (default 2 20)')
    p.add_argument('--k-criterion', default=DEFAULT_K_CRITERION, choices=K_CRITERIA,
                   help='how --k auto chooses (default %s)' % DEFAULT_K_CRITERION)
    p.add_argument('--plots', metavar='DIR', help='write the figures (PNG) into this folder')
    p.add_argument('--embedding', default='tsne', choices=('tsne', 'pca'),
                   help='2-D map in the plots (default tsne, on at most 5000 items)')

    def func(args):
        args.k = _k_arg(args.k)
        if args.n_init < 1:
            raise DeepClusterError('--n-init %d: must be at least 1' % args.n_init)
        run(args)
    p.set_defaults(func=func)
    return p
