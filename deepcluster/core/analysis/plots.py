"""Every figure a user looks at: PNGs drawn headlessly with matplotlib's Agg canvas.

No pyplot anywhere (so no global figure state and no display is ever needed):
each function builds a ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg``,
writes the PNG atomically (temp name, then rename) and returns the Figure, so
tests and callers can read back its titles, axis/tick labels and legend texts.

Figures (paper = ../shared/paper, sections 4.3-4.4):
  plot_training_curves  loss / accuracy / learning rate vs step (train + validation)
  plot_confusion        confusion matrix in percent of each true class (Fig. 4A)
  plot_contingency      truth x cluster contingency in percent of each class (Fig. 4B)
  plot_embedding        t-SNE of the features, by cluster and by truth (Fig. 3A/B)
  plot_metrics_vs_k     V-measure, homogeneity, completeness vs k (Fig. 3C/D)
  plot_k_selection      the automatic choice of k: score curve(s) and the k chosen
  plot_cluster_sizes    members per cluster
  plot_gallery          central slices of members, one row per class
  write_cluster_report  all of the above that apply, into one folder
"""
import csv
import math
import os

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.inference.volumes import atomic_path

# Never matplotlib.use(): this module is imported inside the Scipion GUI, whose
# plot windows need its interactive backend. Figures here draw on their own Agg
# canvas, whatever the backend is.

DPI = 110
EMBED_MAX_POINTS = 5000   # t-SNE beyond this is slow on CPU and no clearer


# ------------------------------------------------------------------ helpers
def _figure(width, height):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, png):
    """Write ``fig`` to ``png`` atomically; return the Figure."""
    png = os.fspath(png)
    if not png.lower().endswith('.png'):
        raise DeepClusterError('%s: figure file names must end in .png' % png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format='png', dpi=DPI)
    return fig


def _is_number(s):
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def sorted_labels(values):
    """Distinct labels in a natural order: numerically if all are numbers, else by text."""
    uniq = list(dict.fromkeys(np.asarray(values).tolist()))
    if all(_is_number(v) for v in uniq):
        return sorted(uniq, key=float)
    return sorted(uniq, key=str)


PALETTES = {
    # clusters: tab10 / tab20; true classes: a different family (Dark2, Paired,
    # tab20b), so a figure with both never shows one colour for two meanings
    'cluster': (('tab10', 10), ('tab20', 20)),
    'truth': (('Dark2', 8), ('Paired', 12), ('tab20b', 20)),
}


# Dark2 with its orange and green last: tab10 (clusters) starts blue, orange, green
TRUTH_ORDER = (0, 2, 3, 5, 6, 7, 4, 1)


def _colours(n, palette='cluster'):
    """n distinguishable colours from ``palette`` ('cluster' or 'truth'), then evenly spaced hues."""
    for name, size in PALETTES[palette]:
        if n <= size:
            cmap = matplotlib.colormaps[name]
            order = TRUTH_ORDER if name == 'Dark2' else range(size)
            return [cmap(i) for i in list(order)[:n]]
    cmap = matplotlib.colormaps['gist_ncar' if palette == 'cluster' else 'gist_rainbow']
    return [cmap(0.05 + 0.9 * i / max(1, n - 1)) for i in range(n)]


def _finite_or_nan(s):
    s = (s or '').strip()
    if not s:
        return math.nan
    try:
        return float(s)
    except ValueError:
        return math.nan


# ----------------------------------------------------------- training curves
def read_training_log(log_csv):
    """Return {column: float array} from a training log CSV (empty cells -> NaN).

    Rows whose ``step`` is not a number (e.g. a half-written last line while
    training is still running) are skipped.
    """
    if not os.path.isfile(log_csv):
        raise DeepClusterError('%s: no such training log' % log_csv)
    with open(log_csv, newline='') as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if 'step' not in cols or 'loss' not in cols:
            raise DeepClusterError('%s: expected a CSV with columns step,loss,acc,val_loss,'
                                   'val_acc,lr,time' % log_csv)
        rows = [r for r in reader if _is_number((r.get('step') or '').strip())]
    if not rows:
        raise DeepClusterError('%s: training log has no rows yet' % log_csv)
    return {c: np.array([_finite_or_nan(r.get(c)) for r in rows]) for c in cols if c}


def plot_training_curves(png, log_csv, title='Training'):
    """Loss and accuracy (train and validation) and learning rate vs step.

    ``log_csv`` has columns step, loss, acc, val_loss, val_acc, lr, time; the
    val_* cells are empty on rows without a validation pass. Missing columns are
    simply not drawn.
    """
    log = read_training_log(log_csv)
    step = log['step']
    has_lr = 'lr' in log and np.isfinite(log['lr']).any()
    fig = _figure(13 if has_lr else 9, 3.8)
    axes = fig.subplots(1, 3 if has_lr else 2)
    # a short run logs a few rows: without markers a line of one or two points is invisible
    short = dict(marker='.', ms=6) if len(step) <= 60 else {}
    for ax, key, name in ((axes[0], 'loss', 'loss'), (axes[1], 'acc', 'accuracy')):
        for col, lab, style in ((key, 'train', dict(lw=1, alpha=0.8, **short)),
                                ('val_' + key, 'validation', dict(lw=1.8, marker='o', ms=3))):
            if col in log:
                ok = np.isfinite(log[col])
                if ok.any():
                    ax.plot(step[ok], log[col][ok], label=lab, **style)
        ax.set_xlabel('step')
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(loc='best')
    accs = np.r_[log.get('acc', []), log.get('val_acc', [])]
    if np.isfinite(accs).any() and np.nanmax(accs) <= 1.0:
        axes[1].set_ylim(-0.02, 1.02)   # fractions, not percent
    if has_lr:
        ok = np.isfinite(log['lr'])
        axes[2].plot(step[ok], log['lr'][ok], color='tab:green', label='learning rate', **short)
        axes[2].set_xlabel('step')
        axes[2].set_ylabel('learning rate')
        axes[2].set_title('learning rate')
        if (log['lr'][ok] > 0).all():
            axes[2].set_yscale('log')
        axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, png)


# ------------------------------------------------------- confusion/contingency
def plot_confusion(png, matrix, class_names, title='Confusion matrix', normalise=True,
                   column_names=None, xlabel='predicted class', ylabel='true class'):
    """Confusion matrix as a heat map (paper Fig. 4A), rows = true classes.

    With ``normalise`` each row is shown in percent of its true class (rows sum
    to 100; an empty row stays 0), else raw counts. ``column_names`` defaults to
    ``class_names`` (square matrix); give them for a non-square table (e.g.
    classes x clusters).
    """
    m = np.asarray(matrix, dtype=float)
    column_names = list(class_names) if column_names is None else list(column_names)
    if m.ndim != 2 or m.shape != (len(class_names), len(column_names)):
        raise DeepClusterError('confusion matrix of shape %s does not match %d class names x %d '
                               'column names' % (m.shape, len(class_names), len(column_names)))
    if normalise:
        tot = m.sum(axis=1, keepdims=True)
        m = np.divide(100.0 * m, tot, out=np.zeros_like(m), where=tot > 0)
    nr, nc = m.shape
    fig = _figure(min(16, 2.5 + 0.55 * nc), min(14, 2.0 + 0.45 * nr))
    ax = fig.add_subplot(1, 1, 1)
    vmax = 100.0 if normalise else max(1.0, float(m.max()))
    im = ax.imshow(m, cmap='Blues', vmin=0, vmax=vmax, aspect='auto', interpolation='nearest')
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label('% of true class' if normalise else 'count')
    ax.set_xticks(range(nc))
    ax.set_xticklabels([str(c) for c in column_names], rotation=45 if nc > 6 else 0,
                       ha='right' if nc > 6 else 'center')
    ax.set_yticks(range(nr))
    ax.set_yticklabels([str(c) for c in class_names])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if nr * nc <= 900:
        fs = max(5, min(10, int(120 / max(nr, nc))))
        for i in range(nr):
            for j in range(nc):
                v = m[i, j]
                txt = ('%.0f' % v if normalise and (v == 0 or v >= 99.5 or nr * nc > 100)
                       else '%.1f' % v if normalise else '%d' % v)
                ax.text(j, i, txt, ha='center', va='center', fontsize=fs,
                        color='white' if v > 0.6 * vmax else 'black')
    fig.tight_layout()
    return _save(fig, png)


def contingency_table(truth, pred):
    """Return (matrix rows=truth classes x cols=clusters, class names, cluster names)."""
    truth = np.asarray(truth)
    if truth.dtype.kind not in 'iu':
        truth = truth.astype(str)
    pred = np.asarray(pred)
    if len(truth) != len(pred):
        raise DeepClusterError('truth has %d labels but the clustering %d' % (len(truth), len(pred)))
    classes = sorted_labels(truth)
    clusters = sorted_labels(pred)
    ci = {c: i for i, c in enumerate(classes)}
    ki = {k: j for j, k in enumerate(clusters)}
    m = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(m, (np.array([ci[t] for t in truth.tolist()], dtype=np.int64),
                  np.array([ki[p] for p in pred.tolist()], dtype=np.int64)), 1)
    return m, classes, clusters


def plot_contingency(png, truth, pred, title='Contingency matrix', normalise=True,
                     cluster_prefix='#'):
    """Truth classes (rows) x clusters (columns), in percent of each class (paper Fig. 4B).

    ``truth`` and ``pred`` are per-item labels of equal length (pred: the cluster
    ids to show, e.g. 1-based).
    """
    m, classes, clusters = contingency_table(truth, pred)
    return plot_confusion(png, m, classes, title=title, normalise=normalise,
                          column_names=['%s%s' % (cluster_prefix, c) for c in clusters],
                          xlabel='cluster', ylabel='true class')


# ------------------------------------------------------------------ embedding
def embed_2d(X, method='tsne', seed=0, max_points=EMBED_MAX_POINTS):
    """Return (2-D coordinates, indices of the rows used, description)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise DeepClusterError('embedding needs a non-empty 2-D feature array, got shape %s'
                               % (X.shape,))
    n = len(X)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    Xs = X[idx].astype(np.float64)
    method = method.lower()
    # t-SNE on fewer than 5 distinct rows (e.g. identical ones) has no PCA start and
    # segfaulted in scikit-learn's Barnes-Hut code: those go to the PCA branch
    if method == 'tsne' and len(Xs) >= 5 and len(np.unique(Xs, axis=0)) >= 5:
        from sklearn.manifold import TSNE
        perplexity = float(min(30.0, (len(Xs) - 1) / 3.0))
        # one thread for small sets: OpenMP workers spin-wait on a busy machine
        # (measured: 60 points 3.0 s with 2 threads, 0.3 s with one, under load)
        import contextlib
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1) if len(Xs) <= 2000 else contextlib.nullcontext():
            Y = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed,
                     ).fit_transform(Xs)
        name = 't-SNE'
    elif method in ('tsne', 'pca'):
        from deepcluster.core.analysis.embedding_map import pca_2d
        Y = pca_2d(Xs)
        name = 'PCA'
    else:
        raise DeepClusterError('embedding method %r: use tsne or pca' % method)
    desc = name + (' of %d random of %d points' % (len(idx), n) if len(idx) < n
                   else ' of %d points' % n)
    return Y, idx, desc


def _scatter_by(ax, Y, labels, legend_title, palette='cluster'):
    names = sorted_labels(labels)
    cols = _colours(len(names), palette)
    lab = np.asarray(labels)
    s = max(2, min(18, 4000 / max(1, len(Y))))
    for name, c in zip(names, cols):
        sel = lab == np.asarray(name, dtype=lab.dtype) if lab.dtype.kind != 'O' else \
            np.array([v == name for v in lab.tolist()])
        ax.scatter(Y[sel, 0], Y[sel, 1], s=s, color=c, label=str(name), alpha=0.8,
                   linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(names) <= 40:
        ax.legend(title=legend_title, loc='center left', bbox_to_anchor=(1.0, 0.5),
                  fontsize=8, markerscale=max(1.0, 6.0 / s), ncol=1 if len(names) <= 20 else 2)


def plot_embedding(png, X, labels, truth=None, method='tsne', seed=0,
                   max_points=EMBED_MAX_POINTS, title=None, legend_title='cluster', coords=None):
    """2-D t-SNE of the features coloured by cluster; a second panel by truth (Fig. 3A/B).

    Beyond ``max_points`` items a seeded random subset is embedded (the title says
    so). ``labels`` (and ``truth``) are the per-item names to show in the legends;
    ``legend_title`` names what ``labels`` are ('cluster', or 'true class' when
    only the truth is shown: it then gets the true-class palette).
    ``method='pca'`` is a fast linear alternative. ``coords``: the
    ``embed_2d`` result to draw instead of computing it.
    """
    X = np.asarray(X)
    labels = np.asarray(labels)
    if len(labels) != len(X) or (truth is not None and len(truth) != len(X)):
        raise DeepClusterError('embedding: %d feature rows but %d labels%s'
                               % (len(X), len(labels), '' if truth is None
                                  else ' and %d truth labels' % len(truth)))
    Y, idx, desc = coords if coords is not None else embed_2d(X, method, seed, max_points)
    first = 'truth' if legend_title == 'true class' else 'cluster'
    panels = [(labels[idx], legend_title, 'coloured by %s' % legend_title, first)]
    if truth is not None:
        panels.append((np.asarray(truth)[idx], 'true class', 'coloured by true class', 'truth'))
    fig = _figure(6.8 * len(panels), 5.4)
    for p, (lab, leg, sub, palette) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        _scatter_by(ax, Y, lab, leg, palette)
        if sub not in (title or ''):         # not twice (the embed viewer's title says it)
            ax.set_title(sub)
        ax.set_xlabel('%s 1' % desc.split(' ')[0])
        ax.set_ylabel('%s 2' % desc.split(' ')[0])
    fig.suptitle(title or desc)
    fig.tight_layout()
    return _save(fig, png)


# ------------------------------------------------------------- choice of k
def _sweep_columns(sweep):
    """Accept a list of per-k dicts or a dict of lists; return a dict of arrays."""
    if isinstance(sweep, dict):
        cols = {k: np.asarray(v) for k, v in sweep.items() if isinstance(v, (list, tuple, np.ndarray))}
    else:
        rows = list(sweep)
        if not rows:
            raise DeepClusterError('metric sweep is empty')
        cols = {key: np.asarray([r.get(key, np.nan) for r in rows]) for key in rows[0]}
    if 'k' not in cols or len(cols['k']) == 0:
        raise DeepClusterError('metric sweep needs a "k" entry')
    return cols


METRIC_NAMES = {'v_measure': 'V-measure', 'homogeneity': 'homogeneity',
                'completeness': 'completeness', 'ari': 'adjusted Rand index',
                'nmi': 'normalised mutual information'}


def plot_metrics_vs_k(png, sweep, title='Clustering vs number of clusters', true_k=None,
                      k_used=None):
    """V-measure, homogeneity and completeness (and ARI if present) vs k (Fig. 3C/D).

    ``sweep``: list of {'k', 'v_measure', 'homogeneity', 'completeness', ...}
    (what ``evaluation.sweep_k`` returns) or a dict of lists. The best V-measure is
    marked on the V-measure curve (a star, its label in that curve's colour);
    ``true_k`` (the number of true classes) is drawn as a dotted line, ``k_used``
    (the k of this run's classes) as a dashed red one.
    """
    cols = _sweep_columns(sweep)
    k = cols['k'].astype(float)
    order = np.argsort(k)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    lines = {}
    for key, style in (('v_measure', dict(lw=2.2, marker='o', color='tab:blue')),
                       ('homogeneity', dict(lw=1.4, marker='s', ms=4, color='tab:orange')),
                       ('completeness', dict(lw=1.4, marker='^', ms=4, color='tab:green')),
                       ('ari', dict(lw=1.0, ls='--', alpha=0.7, color='tab:purple'))):
        if key in cols:
            lines[key], = ax.plot(k[order], cols[key].astype(float)[order],
                                  label=METRIC_NAMES[key], **style)
    if 'v_measure' in cols:
        vm = cols['v_measure'].astype(float)
        b = int(np.nanargmax(vm))
        colour = lines['v_measure'].get_color()
        ax.plot([k[b]], [vm[b]], marker='*', ms=14, color=colour, mec='black', mew=0.6,
                ls='none', zorder=5)
        # the label sits below the star, away from homogeneity/completeness above it
        frac = (k[b] - k.min()) / max(1e-9, k.max() - k.min())
        ax.annotate('best V-measure %.2f (k=%d)' % (vm[b], k[b]), (k[b], vm[b]),
                    xytext=(8 if frac < 0.3 else -8 if frac > 0.7 else 0, -24),
                    textcoords='offset points', fontsize=8,
                    ha='left' if frac < 0.3 else 'right' if frac > 0.7 else 'center',
                    color=colour, fontweight='bold',
                    bbox=dict(boxstyle='round,pad=0.2', fc='white', ec=colour, lw=0.6, alpha=0.9),
                    arrowprops=dict(arrowstyle='-', color=colour, lw=0.8), zorder=6)
    if true_k:
        ax.axvline(true_k, color='grey', ls=':', label='true number of classes')
    if k_used:
        ax.axvline(k_used, color='tab:red', ls='--', lw=1.2, label='k of these classes (%d)'
                   % k_used)
    ax.set_xlabel('number of clusters k')
    ax.set_ylabel('score')
    ax.set_ylim(-0.02, 1.12)
    if len(k) <= 30:
        ax.set_xticks(sorted(set(int(v) for v in k)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, png)


CRITERION_NAMES = {   # core.analysis.k_selection's criteria, in plain words
    'pca_bic': 'Gaussian-mixture BIC on 4 principal components',
    'bic': 'Gaussian-mixture BIC',
    'silhouette': 'silhouette score',
    'stability': 'stability across subsamples',
    'calinski_harabasz': 'Calinski-Harabasz score',
}


def criterion_name(name):
    return CRITERION_NAMES.get(name, str(name).replace('_', ' '))


def plot_k_selection(png, curve, title=None):
    """Score curve(s) of the automatic choice of k, with the chosen k marked.

    ``curve`` (what ``k_selection.choose_k`` returns): {'method', 'k': [...],
    'scores': {criterion: [...]}, 'chosen': k, 'better': {criterion: 'max'|'min'}}.
    One panel per criterion, named in plain words (CRITERION_NAMES); the one that
    chose k says so. k ticks are whole numbers.
    """
    if not isinstance(curve, dict) or 'k' not in curve:
        raise DeepClusterError('k-selection curve needs "k" and "scores"')
    k = np.asarray(curve['k'], dtype=float)
    scores = curve.get('scores') or {curve.get('method', 'score'): curve.get('score')}
    scores = {n: v for n, v in scores.items() if v is not None}
    if not scores:
        raise DeepClusterError('k-selection curve has no scores')
    chosen = curve.get('chosen')
    fig = _figure(max(6.5, 4.6 * len(scores)), 4.3)
    for p, (name, vals) in enumerate(scores.items()):
        ax = fig.add_subplot(1, len(scores), p + 1)
        v = np.asarray(vals, dtype=float)
        ax.plot(k, v, marker='o', lw=1.6)
        if chosen is not None:
            ax.axvline(chosen, color='tab:red', ls='--', label='chosen k = %d' % chosen)
            ax.legend(loc='best', fontsize=8)
        better = (curve.get('better') or {}).get(name)
        ax.set_title('%s%s%s' % (criterion_name(name), '\n(higher is better' if better == 'max' else
                                 '\n(lower is better' if better == 'min' else '\n(',
                                 '; chose k)' if name == curve.get('method') else ')'),
                     fontsize=9)
        ax.set_xlabel('number of clusters k')
        ax.set_ylabel(criterion_name(name) if len(criterion_name(name)) <= 24 else 'score')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title or 'Number of classes chosen from the data: k = %s\n(by the %s)'
                 % (chosen, criterion_name(curve.get('method', '?'))), fontsize=11)
    fig.tight_layout()
    return _save(fig, png)


def plot_cluster_sizes(png, labels, title='Cluster sizes'):
    """Bar chart of members per cluster (labels as they should be shown)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise DeepClusterError('cluster sizes: no labels')
    names = sorted_labels(labels)
    counts = [int(np.sum(labels == np.asarray(n, dtype=labels.dtype))) for n in names]
    fig = _figure(min(16, 3 + 0.45 * len(names)), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), counts, color=_colours(len(names)))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([str(n) for n in names], rotation=45 if len(names) > 12 else 0)
    ax.set_xlabel('cluster')
    ax.set_ylabel('members')
    ax.set_title('%s (%d items, %d clusters)' % (title, labels.size, len(names)))
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    return _save(fig, png)


# ------------------------------------------------------------------- gallery
def central_slice(vol, axis=0):
    """The central 2-D slice of a 3-D volume (z by default), or a 2-D array as is."""
    vol = np.asarray(vol)
    if vol.ndim == 2:
        return vol
    if vol.ndim != 3:
        raise DeepClusterError('gallery: expected 2-D slices or 3-D volumes, got shape %s'
                               % (vol.shape,))
    return np.take(vol, vol.shape[axis] // 2, axis=axis)


def plot_gallery(png, slices_by_class, max_per_class=8,
                 title='Members nearest each class centre (central XY slice)'):
    """Grid of images: one row per class (its name at the left), its members across.

    ``slices_by_class``: {class name: [2-D arrays (or 3-D volumes: central z slice)]}.
    Each image is contrast-stretched on its own (1st-99th percentile). The row
    label is the class name and, under it, how many of its members are shown.
    """
    if not slices_by_class:
        raise DeepClusterError('gallery: no classes given')
    names = list(slices_by_class)
    ncol = max(1, min(max_per_class, max(len(v) for v in slices_by_class.values())))
    fig = _figure(1.3 * ncol + 1.2, 1.3 * len(names) + 0.6)
    axes = np.atleast_2d(fig.subplots(len(names), ncol, squeeze=False))
    for r, name in enumerate(names):
        imgs = list(slices_by_class[name])[:ncol]
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                im = np.asarray(central_slice(imgs[c]), dtype=float)
                lo, hi = np.percentile(im, [1, 99]) if im.size else (0, 1)
                ax.imshow(im, cmap='gray', vmin=lo, vmax=hi if hi > lo else lo + 1,
                          interpolation='nearest')
            if c == 0:
                ax.set_ylabel('%s\n(%d shown)' % (name, min(ncol, len(slices_by_class[name]))),
                              fontsize=8, rotation=0, ha='right', va='center')
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, png)


# -------------------------------------------------------------------- report
def write_cluster_report(out_dir, X, labels, truth=None, sweep=None, curve=None, gallery=None,
                         seed=0, embedding='tsne', true_k=None, files=None, k_used=None):
    """Render every figure that applies into ``out_dir``; return the PNG paths.

    ``labels``: per-item cluster ids as they should be shown (the CLI passes the
    1-based ids it writes); ``truth``: per-item true class names or None;
    ``sweep``: metrics vs k (``evaluation.sweep_k``); ``curve``: the k choice
    (``k_selection.choose_k``); ``gallery``: {class name: [slices]}. Files:
    embedding.png, cluster_sizes.png, contingency.png, metrics_vs_k.png,
    k_selection.png, gallery.png; with ``files`` (one per row of X) also map.csv,
    the 2-D map's coordinates of every item (file,x,y,cluster[,truth],drawn; see
    embedding_map.write_map_csv), which ``deepcluster select`` reads.
    ``k_used``: the number of classes, marked on metrics_vs_k.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    def add(name, fn, *args, **kw):
        p = os.path.join(out_dir, name)
        fn(p, *args, **kw)
        paths.append(p)

    coords = embed_2d(X, embedding, seed)
    add('embedding.png', plot_embedding, X, labels, truth=truth, method=embedding, seed=seed,
        coords=coords)
    if files is not None:
        from deepcluster.core.analysis.embedding_map import place_all, write_map_csv
        Y, idx, desc = coords
        p = os.path.join(out_dir, 'map.csv')
        write_map_csv(p, files, place_all(X, Y, idx), labels, truth=truth, drawn=idx,
                      method=desc.split(' ')[0])
        paths.append(p)
    add('cluster_sizes.png', plot_cluster_sizes, labels)
    if truth is not None:
        add('contingency.png', plot_contingency, truth, labels)
    if sweep:
        add('metrics_vs_k.png', plot_metrics_vs_k, sweep, true_k=true_k, k_used=k_used)
    if curve:
        add('k_selection.png', plot_k_selection, curve)
    if gallery:
        add('gallery.png', plot_gallery, gallery)
    return paths
