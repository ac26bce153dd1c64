"""How well features separate the classes of a realistic set (judging only:
nothing here is fitted on the labels except the cross-validated linear probe).

- k-means (k-means++, 10 starts, fixed seed) at k = the number of classes and for
  every k in 2..max(12, k + 4): V-measure, homogeneity, completeness, ARI,
  contingency tables;
- a linear probe: logistic regression on standardised features, 5-fold
  stratified cross-validated accuracy (how much class information the features
  keep, whatever k-means makes of it);
- rare class ('rare' sets): precision, recall, F1 of the cluster that best
  matches it, at the true k and at the best k;
- membrane-bound vs cytosolic ribosome ('paper' sets): the share of each in a
  cluster of its own at the true k, and the share of membrane-bound ones in the
  cytosolic ones' cluster.
``handcrafted`` is the reference descriptor (20 numbers per subtomogram).
"""
import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, homogeneity_completeness_v_measure
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MB, CYTO = '4v7r_mb', '4v7r'
RARE = '3cf3'


def kmeans(x, k, seed=0):
    return KMeans(k, n_init=10, random_state=seed).fit_predict(x)


def contingency(y, pred, classes):
    ks = sorted(set(pred.tolist()))
    return {c: [int(((y == c) & (pred == j)).sum()) for j in ks] for c in classes}


def probe_accuracy(x, y, seed=0):
    folds = min(5, min(np.unique(y, return_counts=True)[1]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    s = cross_val_score(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return round(float(s.mean()), 4)


def rare_scores(y, pred, rare):
    best = None
    n = int((y == rare).sum())
    for j in np.unique(pred):
        tp = int(((pred == j) & (y == rare)).sum())
        if not tp:
            continue
        p, r = tp / int((pred == j).sum()), tp / n
        f = 2 * p * r / (p + r)
        if best is None or f > best['f1']:
            best = {'precision': round(p, 4), 'recall': round(r, 4), 'f1': round(f, 4), 'cluster_size': int((pred == j).sum())}
    return best or {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'cluster_size': 0}


def own_cluster_shares(y, pred):
    """Share of membrane-bound and of cytosolic ribosomes in a cluster of their own."""
    cm = {c: np.bincount(pred[y == c], minlength=pred.max() + 1) for c in (MB, CYTO)}
    a, b = int(cm[MB].argmax()), int(cm[CYTO].argmax())
    if a == b:           # both mostly in one cluster: the class with the larger share keeps it
        if cm[MB][a] / cm[MB].sum() >= cm[CYTO][b] / cm[CYTO].sum():
            b = int(np.argsort(cm[CYTO])[-2])
        else:
            a = int(np.argsort(cm[MB])[-2])
    return {'mb_own': round(float(cm[MB][a] / cm[MB].sum()), 4), 'cyto_own': round(float(cm[CYTO][b] / cm[CYTO].sum()), 4),
            'mb_in_cyto_majority_cluster': round(float(cm[MB][int(cm[CYTO].argmax())] / cm[MB].sum()), 4)}


def score(features, labels, kind=None, seed=0, k_max=None):
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    classes = sorted(set(y.tolist()))
    K = len(classes)
    k_max = k_max or max(12, K + 4)
    out = {'n': int(len(y)), 'k_true': K, 'classes': classes}
    preds = {}
    sweep = []
    for k in range(2, k_max + 1):
        pred = kmeans(x, k, seed)
        preds[k] = pred
        h, c, v = homogeneity_completeness_v_measure(y, pred)
        sweep.append({'k': k, 'v_measure': round(v, 4), 'homogeneity': round(h, 4), 'completeness': round(c, 4)})
    pk = preds[K]
    h, c, v = homogeneity_completeness_v_measure(y, pk)
    out.update({'v_measure': round(v, 4), 'homogeneity': round(h, 4), 'completeness': round(c, 4),
                'ari': round(adjusted_rand_score(y, pk), 4), 'contingency': contingency(y, pk, classes),
                'over_k': sweep})
    best = max(sweep, key=lambda r: r['v_measure'])
    out['best_k'] = {**best, 'contingency': contingency(y, preds[best['k']], classes)}
    out['probe_accuracy'] = probe_accuracy(x, y, seed)
    if kind == 'rare' or RARE in classes:
        at_k = rare_scores(y, pk, RARE)
        per_k = [{'k': k, **rare_scores(y, preds[k], RARE)} for k in preds]
        out['rare'] = {'class': RARE, 'n': int((y == RARE).sum()), 'at_true_k': at_k,
                       'best_k': max(per_k, key=lambda r: r['f1']), 'over_k': per_k}
    if MB in classes and CYTO in classes:
        out['membrane_bound_vs_cytosolic'] = own_cluster_shares(y, pk)
    return out


# ----------------------------------------------------------------- reference
def handcrafted(volumes):
    """20 numbers per subtomogram: 8-shell radial density profile, 8-band radially
    averaged log power spectrum, 3 inertia eigenvalues and the central mass, on the
    standardised box with protein positive (the data are dark-protein)."""
    v = np.asarray(volumes, np.float64)
    n = v.shape[-1]
    c = (n - 1) / 2.0
    g = np.arange(n) - c
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    shells = np.minimum((r / (n / 2.0) * 8).astype(int), 8)
    k = np.fft.fftfreq(n)
    kr = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    bands = np.minimum((kr / 0.5 * 8).astype(int), 8)
    zz, yy, xx = np.meshgrid(g, g, g, indexing='ij')
    inner = r < n * 0.4
    out = np.zeros((len(v), 20))
    for i, a in enumerate(v):
        a = -(a - a.mean()) / (a.std() + 1e-12)
        prof = np.bincount(shells.ravel(), a.ravel(), 9)[:8] / np.bincount(shells.ravel(), None, 9)[:8]
        ps = np.abs(np.fft.fftn(a)) ** 2
        spec = np.log(np.bincount(bands.ravel(), ps.ravel(), 9)[1:9] / np.bincount(bands.ravel(), None, 9)[1:9] + 1e-12)
        w = np.clip(ndimage.gaussian_filter(a, 1.0), 0, None) * inner
        m = w.sum() + 1e-12
        cz, cy, cx = (w * zz).sum() / m, (w * yy).sum() / m, (w * xx).sum() / m
        d = np.stack([zz - cz, yy - cy, xx - cx])[:, inner]
        cov = (d * w[inner]) @ d.T / m
        eig = np.sort(np.linalg.eigvalsh(cov))
        out[i] = np.concatenate([prof, spec, eig, [w[r < n * 0.25].sum() / inner.sum()]])
    return out
