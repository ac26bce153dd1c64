"""``python -m deepcluster cluster``: features.npy in, labels.csv (+ .json, figures) out."""
import logging
import os

import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis.cluster import METHODS, N_INIT, check_k, class_representatives, cluster_features
from deepcluster.core.analysis.cluster_files import (claim_cluster_outputs, cluster_json_path, gallery,
                                                     match_truth, write_cluster_outputs)
from deepcluster.core.checks import check_number, check_seed
from deepcluster.core.analysis.evaluation import SWEEP_SAMPLE, evaluate, sweep_k
from deepcluster.core.analysis.k_selection import DEFAULT_K_CRITERION, K_CRITERIA, choose_k
from deepcluster.core.inference.features import find_features_csv, load_features
from deepcluster.core.outputs import refuse_overlap

log = logging.getLogger(__name__)


def run(args):
    out, _, plots_dir = claim_cluster_outputs(args.out, args.plots)
    refuse_overlap([('--out', out), ('--out (its .json)', cluster_json_path(out)), ('--plots', plots_dir)],
                   [('FEATURES', args.features), ('FEATURES (its .csv)', find_features_csv(args.features)),
                    ('--truth', args.truth)])
    X, files = load_features(args.features)
    if args.method == 'hdbscan' and len(X) < 5:
        raise DeepClusterError('%s: %d items; hdbscan needs at least 5 (use --method kmeans)'
                               % (args.features, len(X)))
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
    t_all = None if truth is None else np.array([t if t is not None else '(no label)' for t in truth])

    def figures(folder):      # into the temp folder committed with labels.csv
        from deepcluster.core.analysis import plots
        log.info('figures into %s%s', args.plots, ' (t-SNE of up to %d items: a minute or two on '
                 'a CPU)' % plots.EMBED_MAX_POINTS if args.embedding == 'tsne' else '')
        return plots.write_cluster_report(
            folder, X, labels + 1, truth=t_all, sweep=sweep, curve=curve, seed=args.seed,
            gallery=gallery(files, labels, dist),
            embedding=args.embedding, true_k=len(set(t_sel.tolist())) if truth is not None else None,
            files=files, k_used=info['k'])
    js = write_cluster_outputs(out, files, labels, dist, summary, plots=plots_dir, write_plots=figures)
    log.info('wrote %s and %s (%d clusters, sizes %s)', args.out, js, info['k'], info['sizes'])
    return summary


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
    p.add_argument('--plots', metavar='DIR', help='write the figures (PNG) into this folder, and map.csv: '
                        'the 2-D map\'s coordinates (file,x,y,cluster,...) that "select" reads')
    p.add_argument('--embedding', default='tsne', choices=('tsne', 'pca'),
                   help='2-D map in the plots (default tsne, on at most 5000 items)')

    def func(args):
        args.k = _k_arg(args.k)
        check_number('--n-init', args.n_init, 1, 1000, integer=True)
        check_seed('--seed', args.seed)
        for v in args.k_range:
            check_number('--k-range', v, 1, 10 ** 5, integer=True)
        run(args)
    p.set_defaults(func=func)
    return p
