"""Choose the number of classes from the features alone (``--k auto``).

  choose_k(X, k_range=(2, 20), method='kmeans', seed=0, criterion=...) -> (k, curve)
"""
import logging
import time

import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis.cluster import _subsample, _threads, check_features, cluster_features

log = logging.getLogger(__name__)

K_CRITERIA = ('pca_bic', 'silhouette', 'bic', 'stability', 'calinski_harabasz')
DEFAULT_K_CRITERION = 'pca_bic'      # see choose_k for the measured reason
K_SAMPLE = 4_000            # choice of k works on at most this many items
K_N_INIT = 10               # k-means restarts per k when choosing k
BIC_COVARIANCE = 'full'     # GMM covariance of the BIC criterion
PCA_BIC_DIMS = 4            # leading principal components the pca_bic GMMs are fitted in
PCA_BIC_REG = 1e-4          # covariance regularisation there (the components are scaled to unit total variance)


def _stability(Xs, k, seed, pairs=4, frac=0.8):
    """Mean ARI between k-means runs on overlapping random 80% subsets (on the overlap)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    rng = np.random.default_rng(seed + 7919 * k)
    n = len(Xs)
    m = int(frac * n)
    vals = []
    for p in range(pairs):
        a = rng.choice(n, m, replace=False)
        b = rng.choice(n, m, replace=False)
        la = np.full(n, -1)
        lb = np.full(n, -1)
        la[a] = KMeans(k, n_init=2, random_state=seed + 2 * p).fit_predict(Xs[a])
        lb[b] = KMeans(k, n_init=2, random_state=seed + 2 * p + 1).fit_predict(Xs[b])
        both = (la >= 0) & (lb >= 0)
        vals.append(adjusted_rand_score(la[both], lb[both]))
    return float(np.mean(vals))


def choose_k(X, k_range=(2, 20), method='kmeans', seed=0, criterion=DEFAULT_K_CRITERION,
             sample=K_SAMPLE, all_criteria=False):
    """Choose the number of clusters from the data; return (k, curve).

    Criteria, all on a seeded subsample of ``sample`` items:
      pca_bic            Bayesian information criterion of a full-covariance GMM in
                         the PCA_BIC_DIMS (4) leading principal components; min.
      silhouette         mean silhouette of k-means (``method``) clusterings; max.
      bic                Bayesian information criterion of a full-covariance GMM; min.
      stability          agreement (ARI) of k-means on random 80% subsets; max
                         (ties within 0.01: the largest k).
      calinski_harabasz  between/within dispersion ratio of k-means; max.
    Default: pca_bic, because on what users cluster -- the shipped model's features
    of simulated subtomograms, whose classes overlap -- it comes nearest the true k
    and the best V-measure, where silhouette (the best on well-separated synthetic
    clusters, below) sees only the coarse split. Measured by
    benchmarks/bench_quality.py ('auto_k') and on held-out sets of other seeds and
    sizes (SHREC 13 + negative, 14 classes, 700 and 2,800 items at SNR 0.1-100;
    ribosomes free/membrane-bound, 5 classes; unseen shapes, 11 and 21 classes;
    6 classes of sizes 10:1): pca_bic chose k = 10-16 for the 14-class sets
    (silhouette 3 at SNR < 1, 8 above), 5 and 7 for the 5-class ones (silhouette 2),
    10 and 14 for 11 and 21 unseen shapes (silhouette 6 and 11), 4 for the 6
    uneven classes (silhouette 2); V-measure at the chosen k 0-0.05 below the
    best over k, silhouette's 0.03-0.28 below. Fewer dimensions are what make it
    work: in all 32, each cluster's 528 covariance numbers price clusters out
    ('bic' below chose 2-9 on the same sets); 6 or 8 components chose fewer, and worse, k than 4.
    On the well-separated synthetic sets below it is right on 9 of 24 (mean
    |k error| 1.5): choose silhouette for features that form clean, separate groups.

    Silhouette was the most accurate on well-separated synthetic clusters, at a quarter
    of BIC's cost. Measured by benchmarks/bench_cluster.py (``auto_k``): 24 synthetic
    sets of 3000 items in 32-d with known k in {3, 8, 13}: randomly rotated
    anisotropic Gaussian clusters (axis s.d. ratio 8), sizes 10:1, centre
    separation 12 or 20, half of them L2-normalised onto the hypersphere; k
    searched in 2..20. Right k: silhouette 17/24 (16 of the 17 sets that
    k-means itself separates at the true k, V >= 0.99; mean |k error| 0.06
    there), BIC 10/24 (10/17; full covariances, 528 numbers per cluster in 32-d,
    are starved by small clusters so it under-counts; diagonal ones over-split
    anisotropic clusters: 0/24), stability 3/24 and Calinski-Harabasz 2/24 (both
    favour small k). Time for all 24 sets on a busy 2-core CPU: silhouette 95 s,
    BIC 382 s, stability 61 s, Calinski-Harabasz 41 s. Silhouette's known
    weakness: with hierarchical structure (two classes much closer to each
    other than to the rest) it may merge them (1 of the 17 sets).
    ``all_criteria`` computes every criterion for the curve (the chosen k
    still comes from ``criterion``).

    curve: {'method': criterion, 'k': [...], 'scores': {criterion: [...]},
            'better': {criterion: 'max'|'min'}, 'chosen': k, 'n_used', 'seconds'}.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, silhouette_score
    t0 = time.time()
    X = check_features(X)
    if criterion not in K_CRITERIA:
        raise DeepClusterError('k criterion %r: choose one of %s' % (criterion, ', '.join(K_CRITERIA)))
    idx = _subsample(len(X), sample, seed)
    Xs = np.asarray(X[idx], np.float64)
    lo, hi = int(k_range[0]), int(k_range[1])
    if lo < 2 or hi < lo:
        raise DeepClusterError('--k-range %s %s: need 2 <= low <= high' % (k_range[0], k_range[1]))
    hi = min(hi, len(Xs) - 1)
    if hi < lo:
        raise DeepClusterError('only %d items: too few to choose k in %s..%s'
                               % (len(X), k_range[0], k_range[1]))
    ks = list(range(lo, hi + 1))
    wanted = K_CRITERIA if all_criteria else (criterion,)
    scores = {c: [] for c in wanted}
    better = {'pca_bic': 'min', 'silhouette': 'max', 'bic': 'min', 'stability': 'max',
              'calinski_harabasz': 'max'}
    if 'pca_bic' in wanted:
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture
        Z = PCA(min(PCA_BIC_DIMS, *Xs.shape), random_state=seed).fit_transform(Xs)
        Z /= max(float(np.sqrt((Z ** 2).sum(1).mean())), 1e-12)
    with _threads(len(Xs)):
        for k in ks:
            if 'pca_bic' in wanted:
                gm = GaussianMixture(k, covariance_type='full', n_init=2, reg_covar=PCA_BIC_REG,
                                     random_state=seed).fit(Z)
                scores['pca_bic'].append(float(gm.bic(Z)))
            if 'silhouette' in wanted or 'calinski_harabasz' in wanted:
                if method in ('kmeans', 'gmm'):
                    lab = KMeans(k, n_init=K_N_INIT, random_state=seed).fit_predict(Xs)
                else:
                    lab, _, _ = cluster_features(Xs, k, method, seed, scores=False)
                if 'silhouette' in wanted:
                    scores['silhouette'].append(float(silhouette_score(Xs, lab)))
                if 'calinski_harabasz' in wanted:
                    scores['calinski_harabasz'].append(float(calinski_harabasz_score(Xs, lab)))
            if 'bic' in wanted:
                from sklearn.mixture import GaussianMixture
                gm = GaussianMixture(k, covariance_type=BIC_COVARIANCE, n_init=2, reg_covar=1e-5,
                                     random_state=seed).fit(Xs)
                scores['bic'].append(float(gm.bic(Xs)))
            if 'stability' in wanted:
                scores['stability'].append(_stability(Xs, k, seed))
    v = np.asarray(scores[criterion])
    if criterion == 'stability':
        chosen = ks[int(np.nonzero(v >= v.max() - 0.01)[0].max())]
    elif better[criterion] == 'max':
        chosen = ks[int(np.argmax(v))]
    else:
        chosen = ks[int(np.argmin(v))]
    curve = {'method': criterion, 'k': ks, 'scores': scores,
             'better': {c: better[c] for c in scores}, 'chosen': int(chosen),
             'n_used': int(len(idx)), 'seconds': round(time.time() - t0, 3)}
    log.info('choice of k by %s on %d items: k = %d (%.1f s)', criterion, len(idx), chosen,
             curve['seconds'])
    return int(chosen), curve
