"""Every figure renders headlessly to a PNG and says what it should (labels, legends, values)."""
import os

import numpy as np
import pytest

from deepcluster.core import DeepClusterError

from deepcluster.core.analysis import plots


def is_png(path):
    with open(path, 'rb') as f:
        head = f.read(8)
    return head == b'\x89PNG\r\n\x1a\n' and os.path.getsize(path) > 2000


def legend_texts(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def ticks(ax, axis='x'):
    labels = ax.get_xticklabels() if axis == 'x' else ax.get_yticklabels()
    return [t.get_text() for t in labels]


LOG = """step,loss,acc,val_loss,val_acc,lr,time
1,2.5,0.10,,,0.001,0.1
2,2.0,0.30,,,0.001,0.2
3,1.5,0.50,1.6,0.45,0.0005,0.3
4,1.0,0.70,,,0.0005,0.4
5,0.8,0.80,0.9,0.75,0.0001,0.5
6,0.7"""


def test_training_curves(tmp_path):
    log = tmp_path / 'log.csv'
    log.write_text(LOG)    # last line half-written, as while training still runs
    png = tmp_path / 'curves.png'
    fig = plots.plot_training_curves(png, log)
    assert is_png(png)
    loss_ax, acc_ax, lr_ax = fig.axes
    assert legend_texts(loss_ax) == ['train', 'validation']
    assert legend_texts(acc_ax) == ['train', 'validation']
    assert (loss_ax.get_xlabel(), loss_ax.get_ylabel()) == ('step', 'loss')
    assert acc_ax.get_ylabel() == 'accuracy' and lr_ax.get_ylabel() == 'learning rate'
    # validation drawn only where present: steps 3 and 5
    val = loss_ax.get_lines()[1]
    assert list(val.get_xdata()) == [3, 5] and list(val.get_ydata()) == [1.6, 0.9]
    train = loss_ax.get_lines()[0]
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6]


def test_short_training_runs_have_markers(tmp_path):
    log = tmp_path / 'log.csv'
    log.write_text('step,loss,acc,val_loss,val_acc,lr,time\n1,2.0,0.1,2.1,0.14,0.001,1\n')
    fig = plots.plot_training_curves(tmp_path / 'c.png', log)
    assert all(ln.get_marker() not in (None, '', 'None') for ax in fig.axes for ln in ax.get_lines())


def test_training_curves_without_validation_or_lr(tmp_path):
    log = tmp_path / 'log.csv'
    log.write_text('step,loss,acc\n1,1.0,0.5\n2,0.5,0.7\n')
    fig = plots.plot_training_curves(tmp_path / 'c.png', log)
    assert len(fig.axes) == 2 and legend_texts(fig.axes[0]) == ['train']


@pytest.mark.parametrize('content,match', [(None, 'no such training log'),
                                           ('a,b\n1,2\n', 'expected a CSV with columns'),
                                           ('step,loss\n', 'no rows')])
def test_training_curves_bad_log(tmp_path, content, match):
    log = tmp_path / 'log.csv'
    if content is not None:
        log.write_text(content)
    with pytest.raises(DeepClusterError, match=match):
        plots.plot_training_curves(tmp_path / 'c.png', log)
    assert not (tmp_path / 'c.png').exists()


def test_confusion_percentages(tmp_path):
    png = tmp_path / 'cm.png'
    fig = plots.plot_confusion(png, [[5, 1], [0, 4]], ['ribosome', 'proteasome'], title='T')
    assert is_png(png)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ['83.3', '16.7', '0', '100']
    assert ticks(ax, 'x') == ['ribosome', 'proteasome'] == ticks(ax, 'y')
    assert ax.get_title() == 'T' and ax.get_ylabel() == 'true class'
    fig = plots.plot_confusion(tmp_path / 'raw.png', [[5, 1], [0, 4]], ['a', 'b'], normalise=False)
    assert [t.get_text() for t in fig.axes[0].texts] == ['5', '1', '0', '4']


def test_confusion_shape_mismatch(tmp_path):
    with pytest.raises(DeepClusterError, match='does not match'):
        plots.plot_confusion(tmp_path / 'x.png', np.eye(3), ['a', 'b'])


def test_contingency_rows_are_classes_in_percent(tmp_path):
    truth = ['neg'] * 4 + ['ribo'] * 4
    pred = [1, 1, 1, 1, 2, 2, 2, 3]
    fig = plots.plot_contingency(tmp_path / 'ct.png', truth, pred)
    assert is_png(tmp_path / 'ct.png')
    ax = fig.axes[0]
    assert ticks(ax, 'x') == ['#1', '#2', '#3'] and ticks(ax, 'y') == ['neg', 'ribo']
    assert [t.get_text() for t in ax.texts] == ['100', '0', '0', '0', '75.0', '25.0']
    m, classes, clusters = plots.contingency_table(truth, pred)
    assert m.tolist() == [[4, 0, 0], [0, 3, 1]] and clusters == [1, 2, 3]


def test_embedding_two_panels_with_legends(tmp_path):
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (30, 32)), rng.normal(6, 1, (30, 32))].astype(np.float32)
    labels = np.r_[np.full(30, 1), np.full(30, 2)]
    truth = np.array(['ribosome'] * 30 + ['rubisco'] * 30)
    png = tmp_path / 'emb.png'
    fig = plots.plot_embedding(png, X, labels, truth=truth, seed=0)
    assert is_png(png)
    a, b = fig.axes
    assert legend_texts(a) == ['1', '2'] and legend_texts(b) == ['ribosome', 'rubisco']
    assert a.get_legend().get_title().get_text() == 'cluster'
    assert b.get_legend().get_title().get_text() == 'true class'
    assert fig._suptitle.get_text() == 't-SNE of 60 points'


def test_embedding_palettes_and_legend_title(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 32)).astype(np.float32)
    labels = np.arange(40) % 3 + 1
    truth = np.array(['a', 'b', 'c', 'd'] * 10)
    fig = plots.plot_embedding(tmp_path / 'e.png', X, labels, truth=truth, method='pca')
    a, b = fig.axes
    ca = {tuple(c) for coll in a.collections for c in coll.get_facecolors()[:, :3].round(3)}
    cb = {tuple(c) for coll in b.collections for c in coll.get_facecolors()[:, :3].round(3)}
    assert not ca & cb                       # clusters and true classes never share a colour
    # only the truth (the embed viewer): the title and the legend agree
    fig = plots.plot_embedding(tmp_path / 'e2.png', X, truth, method='pca', legend_title='true class',
                               title='t-SNE of the features, coloured by true class')
    assert fig.axes[0].get_legend().get_title().get_text() == 'true class'
    assert fig.axes[0].get_title() == ''        # said once, in the figure's title


def test_importing_plots_never_switches_the_backend():
    import importlib
    import matplotlib
    import matplotlib.pyplot as plt
    before = matplotlib.get_backend()
    plt.switch_backend('svg')               # stands for the GUI's TkAgg
    try:
        importlib.reload(plots)
        plots.plot_cluster_sizes
        assert matplotlib.get_backend() == 'svg'
    finally:
        plt.switch_backend(before)


def test_embedding_subsamples_and_says_so(tmp_path):
    X = np.random.default_rng(1).normal(size=(80, 32)).astype(np.float32)
    fig = plots.plot_embedding(tmp_path / 'e.png', X, np.arange(80) % 3, method='pca',
                               max_points=50)
    assert fig._suptitle.get_text() == 'PCA of 50 random of 80 points'
    assert len(fig.axes) == 1 and legend_texts(fig.axes[0]) == ['0', '1', '2']
    with pytest.raises(DeepClusterError, match='80 feature rows but 79 labels'):
        plots.plot_embedding(tmp_path / 'e.png', X, np.arange(79))


SWEEP = [{'k': k, 'v_measure': v, 'homogeneity': h, 'completeness': c, 'ari': v}
         for k, v, h, c in ((2, 0.6, 0.45, 0.9), (3, 0.95, 0.94, 0.96), (4, 0.8, 0.9, 0.72))]


def test_metrics_vs_k(tmp_path):
    fig = plots.plot_metrics_vs_k(tmp_path / 'm.png', SWEEP, true_k=3)
    assert is_png(tmp_path / 'm.png')
    ax = fig.axes[0]
    assert legend_texts(ax) == ['V-measure', 'homogeneity', 'completeness', 'adjusted Rand index',
                                'true number of classes']
    assert ax.get_xlabel() == 'number of clusters k'
    assert [t.get_text() for t in ax.texts] == ['best V-measure 0.95 (k=3)']
    # the label has the V-measure curve's colour, the star sits on that curve
    vline = ax.get_lines()[0]
    assert ax.texts[0].get_color() == vline.get_color()
    star = [ln for ln in ax.get_lines() if ln.get_marker() == '*'][0]
    assert list(star.get_xdata()) == [3] and list(star.get_ydata()) == [0.95]
    fig = plots.plot_metrics_vs_k(tmp_path / 'm3.png', SWEEP, true_k=3, k_used=4)
    assert legend_texts(fig.axes[0])[-1] == 'k of these classes (4)'
    # a dict of lists works too
    cols = {key: [r[key] for r in SWEEP] for key in ('k', 'v_measure', 'homogeneity', 'completeness')}
    fig = plots.plot_metrics_vs_k(tmp_path / 'm2.png', cols)
    assert len(fig.axes[0].get_lines()) == 4     # 3 curves + the star of the best


def test_k_selection(tmp_path):
    curve = {'method': 'silhouette', 'k': [2, 3, 4], 'chosen': 3,
             'scores': {'silhouette': [0.3, 0.7, 0.5], 'bic': [10.0, 5.0, 7.0]},
             'better': {'silhouette': 'max', 'bic': 'min'}}
    fig = plots.plot_k_selection(tmp_path / 'k.png', curve)
    assert is_png(tmp_path / 'k.png')
    a, b = fig.axes
    assert a.get_title() == 'silhouette score\n(higher is better; chose k)'
    assert b.get_title() == 'Gaussian-mixture BIC\n(lower is better)'
    assert legend_texts(a) == ['chosen k = 3']
    assert fig._suptitle.get_text() == 'Number of classes chosen from the data: k = 3\n(by the silhouette score)'
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in a.get_xticks())      # no 2.5 / 7.5
    curve['method'] = 'pca_bic'
    curve['scores'] = {'pca_bic': [3.0, 1.0, 2.0]}
    fig = plots.plot_k_selection(tmp_path / 'k2.png', curve)
    text = fig._suptitle.get_text() + fig.axes[0].get_title()
    assert 'pca_bic' not in text and 'decides' not in text
    assert 'Gaussian-mixture BIC on 4 principal components' in text


def test_cluster_sizes(tmp_path):
    fig = plots.plot_cluster_sizes(tmp_path / 's.png', [2, 1, 1, 3, 1, 2])
    assert is_png(tmp_path / 's.png')
    ax = fig.axes[0]
    assert ticks(ax) == ['1', '2', '3']
    assert [p.get_height() for p in ax.patches] == [3, 2, 1]
    assert ax.get_title() == 'Cluster sizes (6 items, 3 clusters)'


def test_gallery_rows_are_classes(tmp_path):
    rng = np.random.default_rng(0)
    gallery = {'ribosome': [rng.normal(size=(16, 16)) for _ in range(3)],
               'proteasome': [rng.normal(size=(8, 16, 16))]}    # 3-D: central slice
    fig = plots.plot_gallery(tmp_path / 'g.png', gallery, max_per_class=2)
    assert is_png(tmp_path / 'g.png')
    assert len(fig.axes) == 4     # 2 rows x 2 columns
    assert [fig.axes[0].get_ylabel(), fig.axes[2].get_ylabel()] == ['ribosome\n(2 shown)',
                                                                     'proteasome\n(1 shown)']
    assert len(fig.axes[1].images) == 1 and len(fig.axes[3].images) == 0
    with pytest.raises(DeepClusterError, match='no classes'):
        plots.plot_gallery(tmp_path / 'g.png', {})


def test_cluster_report(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 32)).astype(np.float32)
    labels = np.arange(40) % 2 + 1
    curve = {'method': 'silhouette', 'k': [2, 3], 'chosen': 2, 'scores': {'silhouette': [0.5, 0.2]}}
    paths = plots.write_cluster_report(tmp_path / 'rep', X, labels, truth=np.array(['a', 'b'] * 20),
                                       sweep=SWEEP, curve=curve,
                                       gallery={'1': [np.ones((4, 4))]}, embedding='pca')
    assert [os.path.basename(p) for p in paths] == [
        'embedding.png', 'cluster_sizes.png', 'contingency.png', 'metrics_vs_k.png',
        'k_selection.png', 'gallery.png']
    assert all(is_png(p) for p in paths)
    assert sorted(os.listdir(tmp_path / 'rep')) == sorted(os.path.basename(p) for p in paths)
    # with the files: map.csv, the coordinates of embedding.png, for "deepcluster select"
    from deepcluster.core.analysis.embedding_map import read_map_csv
    files = ['/d/s%02d.mrc' % i for i in range(40)]
    paths = plots.write_cluster_report(tmp_path / 'rep2', X, labels, truth=np.array(['a', 'b'] * 20),
                                       embedding='pca', files=files)
    m = read_map_csv(str(tmp_path / 'rep2' / 'map.csv'))
    assert m['file'] == files and m['cluster'] == [str(v) for v in labels]
    assert m['truth'][:2] == ['a', 'b'] and m['drawn'].all()
    Y, _, _ = plots.embed_2d(X, 'pca')
    np.testing.assert_allclose(m['xy'], Y, rtol=1e-3, atol=1e-3)


def test_png_name_required(tmp_path):
    with pytest.raises(DeepClusterError, match='must end in .png'):
        plots.plot_cluster_sizes(tmp_path / 's.jpg', [1, 2])
