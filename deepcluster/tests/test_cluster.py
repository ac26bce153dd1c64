"""Clustering, choice of k, metrics and the cluster command."""
import csv
import json
import os

import numpy as np
import pytest
from sklearn import metrics

from deepcluster.core import DeepClusterError

from deepcluster.core.analysis import cluster

from deepcluster.core.analysis import cluster_files
from deepcluster.core.inference import features as features_io

from deepcluster.core.analysis import evaluation

from deepcluster.core.analysis import k_selection
from deepcluster.cli import main


def blobs(n=600, k=4, seed=0, **kw):
    kw.setdefault('separation', 20.0)
    return evaluation.synthetic_features(n, k, seed=seed, **kw)


# ------------------------------------------------------------------ clustering
def test_kmeans_recovers_known_classes():
    X, y = blobs(600, 5, seed=1)
    labels, dist, info = cluster.cluster_features(X, 5, seed=0)
    assert metrics.v_measure_score(y, labels) > 0.99
    assert info['k'] == 5 and info['method'] == 'kmeans' and info['fit']['mode'] == 'full'
    # clusters are numbered by size, largest first
    sizes = np.bincount(labels)
    assert info['sizes'] == sizes.tolist() and list(sizes) == sorted(sizes, reverse=True)
    # distance = Euclidean distance to the member's centroid; centroids = k-means centres = means
    C = np.array(info['centroids'])
    assert np.allclose(C[2], X[labels == 2].mean(0), atol=1e-3)
    assert np.allclose(dist, np.linalg.norm(X - C[labels], axis=1), atol=1e-3)
    assert np.isclose(info['inertia'], (dist.astype(float) ** 2).sum(), rtol=1e-6)
    cd = np.array(info['centroid_distances'])
    assert np.allclose(cd, cd.T) and np.allclose(np.diag(cd), 0)
    assert info['scores']['silhouette'] > 0.5
    # same seed, same answer
    again, _, _ = cluster.cluster_features(X, 5, seed=0)
    assert np.array_equal(labels, again)


def test_large_n_path_matches(monkeypatch):
    """The subsample-restarts + full-refinement path (and its chunked variant) finds the classes."""
    X, y = blobs(3000, 6, seed=2)
    monkeypatch.setattr(cluster, 'FULL_FIT_MAX', 1000)
    monkeypatch.setattr(cluster, 'FIT_SAMPLE', 500)
    labels, dist, info = cluster.cluster_features(X, 6, seed=0, n_init=3)
    assert 'subsample' in info['fit']['mode'] and 'scikit-learn' in info['fit']['mode']
    assert metrics.v_measure_score(y, labels) > 0.99
    monkeypatch.setattr(cluster, 'IN_MEMORY_MAX', 0)     # features too big to load: chunked Lloyd
    monkeypatch.setattr(cluster, 'CHUNK', 256)
    labels2, dist2, info2 = cluster.cluster_features(X, 6, seed=0, n_init=3)
    assert 'chunked' in info2['fit']['mode']
    assert metrics.adjusted_rand_score(labels, labels2) > 0.999
    assert np.allclose(dist, dist2, atol=1e-3)


@pytest.mark.parametrize('method', ['gmm', 'agglomerative', 'hdbscan', 'spectral'])
def test_other_methods(method):
    X, y = blobs(400, 3, seed=3)
    labels, dist, info = cluster.cluster_features(X, 3, method=method, seed=0, scores=False)
    ok = labels >= 0
    assert ok.mean() > 0.9 and info['k'] == 3
    assert metrics.v_measure_score(y[ok], labels[ok]) > 0.95
    assert np.isfinite(dist[ok]).all() and np.isnan(dist[~ok]).all()


def test_spectral_follows_clusters_that_are_not_round():
    """Two interleaved half-moons: k-means cuts them straight across, the
    nearest-neighbour graph follows each one; on a subsample too."""
    from sklearn.datasets import make_moons
    X, y = make_moons(400, noise=0.05, random_state=0)
    X = np.hstack([X, np.zeros((400, 30))]).astype(np.float32)
    assert metrics.v_measure_score(y, cluster.cluster_features(X, 2, scores=False)[0]) < 0.5
    labels, dist, info = cluster.cluster_features(X, 2, method='spectral', seed=0)
    assert metrics.v_measure_score(y, labels) > 0.95
    assert info['fit'] == {'mode': 'full', 'n_fit': 400, 'n_neighbors': 10}
    assert info['sizes'][0] >= info['sizes'][1] and np.isfinite(dist).all()
    again = cluster.cluster_features(X, 2, method='spectral', seed=0, scores=False)[0]
    assert np.array_equal(labels, again)


def test_spectral_on_many_items_fits_a_subsample(monkeypatch):
    monkeypatch.setattr(cluster, 'SPECTRAL_MAX', 150)
    X, y = blobs(600, 4, seed=5)
    labels, _, info = cluster.cluster_features(X, 4, method='spectral', seed=0, scores=False)
    assert info['fit']['mode'] == 'subsample fit + nearest centroid' and info['fit']['n_fit'] == 150
    assert len(labels) == 600 and metrics.v_measure_score(y, labels) > 0.95
    with pytest.raises(DeepClusterError, match='k=200 clusters from the 150 items it fits'):
        cluster.cluster_features(X, 200, method='spectral', scores=False)


def test_spectral_on_tiny_sets():
    X = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    assert sorted(cluster.cluster_features(X, 3, method='spectral', scores=False)[0]) == [0, 1, 2]
    assert set(cluster.cluster_features(X, 1, method='spectral', scores=False)[0]) == {0}
    assert len(set(cluster.cluster_features(X, 2, method='spectral', scores=False)[0])) == 2


def test_class_representatives():
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.5]], np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    rep = cluster.class_representatives(X, labels, [[1.1], [11.0], [5.0]])
    assert rep.tolist() == [1, 4, -1]


# ---------------------------------------------------------------- choice of k
@pytest.mark.parametrize('sphere', [False, True])
def test_auto_k_finds_true_k(sphere):
    X, y = blobs(1200, 6, seed=4, imbalance=5.0, anisotropy=8.0, sphere=sphere)
    for criterion in ('pca_bic', 'silhouette'):        # the default, and the best on clean groups
        k, curve = k_selection.choose_k(X, (2, 10), seed=0, criterion=criterion)
        assert k == 6 and curve['chosen'] == 6 and curve['method'] == criterion
        assert curve['k'] == list(range(2, 11)) and len(curve['scores'][criterion]) == 9
    assert k_selection.DEFAULT_K_CRITERION == 'pca_bic'


@pytest.mark.parametrize('criterion', ['bic', 'stability', 'calinski_harabasz'])
def test_other_k_criteria_on_easy_data(criterion):
    X, y = blobs(2000, 4, seed=5, imbalance=2.0)   # BIC's full covariances need items
    k, curve = k_selection.choose_k(X, (2, 7), seed=0, criterion=criterion)
    assert k == 4 and curve['better'][criterion] in ('max', 'min')


def test_auto_k_on_very_few_items():
    X, _ = blobs(3, 2)                   # fewer items than pca_bic's 4 components
    assert k_selection.choose_k(X, (2, 20))[0] == 2


def test_choose_k_bad_range():
    X, _ = blobs(50, 2)
    with pytest.raises(DeepClusterError, match='--k-range 1 5'):
        k_selection.choose_k(X, (1, 5))
    with pytest.raises(DeepClusterError, match='criterion'):
        k_selection.choose_k(X, (2, 5), criterion='elbow')


# --------------------------------------------------------------------- metrics
def test_metrics_against_sklearn_and_by_hand():
    truth = ['a', 'a', 'a', 'b', 'b', 'c']
    pred = [1, 1, 2, 2, 3, 3]
    e = evaluation.evaluate(truth, pred)
    h, c, v = metrics.homogeneity_completeness_v_measure(truth, pred)
    assert (e['homogeneity'], e['completeness'], e['v_measure']) == pytest.approx((h, c, v))
    assert e['ari'] == pytest.approx(metrics.adjusted_rand_score(truth, pred))
    assert e['nmi'] == pytest.approx(metrics.normalized_mutual_info_score(truth, pred))
    assert e['v_measure'] == pytest.approx(2 * h * c / (h + c))
    assert e['contingency'] == {'classes': ['a', 'b', 'c'], 'clusters': [1, 2, 3],
                                'matrix': [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}
    # renamed but identical partition: perfect; one cluster for all: homogeneity 0
    assert evaluation.evaluate(['x', 'x', 'y'], [7, 7, 2])['v_measure'] == pytest.approx(1.0)
    one = evaluation.evaluate(['x', 'x', 'y', 'y'], [1, 1, 1, 1])
    assert one['homogeneity'] == pytest.approx(0.0) and one['completeness'] == pytest.approx(1.0)


def test_sweep_peaks_at_true_k():
    X, y = blobs(500, 4, seed=6)
    sweep = evaluation.sweep_k(X, y, range(2, 8))
    assert [r['k'] for r in sweep] == list(range(2, 8))
    best = max(sweep, key=lambda r: r['v_measure'])
    assert best['k'] == 4 and best['v_measure'] > 0.99
    assert sweep[0]['completeness'] > sweep[0]['homogeneity']    # k too small: merged classes
    assert sweep[-1]['homogeneity'] > sweep[-1]['completeness']  # k too big: split classes


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize('X,k,match', [
    (np.zeros((5, 3)), 0, 'k=0: must be at least 1'),
    (np.zeros((5, 3)), 6, r'k=6: more clusters than items \(5\)'),
    (np.zeros(5), 2, 'expected a 2-D array'),
    (np.array([[0, 1], [np.nan, 0], [1, 1]]), 2, 'row 1 holds NaN or infinite'),
    (np.array([[0, 1], [0, 0], [1, np.inf]]), 2, 'row 2 holds NaN or infinite'),
])
def test_bad_features_or_k(X, k, match):
    with pytest.raises(DeepClusterError, match=match):
        cluster.cluster_features(X, k)


def test_bad_method():
    with pytest.raises(DeepClusterError, match="method 'dbscan'"):
        cluster.cluster_features(np.zeros((5, 2)), 2, method='dbscan')


# ------------------------------------------------------------------------- CLI
def write_features(folder, X, files=None, csv_name='features.csv'):
    folder.mkdir(exist_ok=True)
    npy = folder / 'features.npy'
    np.save(npy, np.asarray(X, np.float32))
    files = files or [str(folder / ('sub_%03d.mrc' % i)) for i in range(len(X))]
    with open(folder / csv_name, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['row', 'file'])
        w.writerows(enumerate(files))
    return str(npy), files


def write_truth(path, files, labels):
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['file', 'label'])
        w.writerows(zip(files, labels))
    return str(path)


def run_cli(argv, capsys):
    """Run the CLI; return (exit status, stderr)."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def test_cli_end_to_end(tmp_path, capsys):
    X, y = blobs(240, 3, seed=7)
    names = np.array(['ribosome', 'proteasome', 'rubisco'])[y]
    npy, files = write_features(tmp_path / 'emb', X)
    # truth names files by their base name only, and leaves two items unlabelled
    truth = write_truth(tmp_path / 'truth.csv', [os.path.basename(f) for f in files[2:]], names[2:])
    out = tmp_path / 'out' / 'labels.csv'
    status, err = run_cli(['-q', 'cluster', npy, '--k', 'auto', '--k-range', '2', '6',
                           '--out', str(out), '--truth', truth, '--plots', str(tmp_path / 'plots'),
                           '--embedding', 'pca'], capsys)
    assert status == 0, err
    with open(out, newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['file', 'label', 'distance'] and len(rows) == 241
    assert [r[0] for r in rows[1:]] == files
    labels = np.array([int(r[1]) for r in rows[1:]])
    assert sorted(set(labels)) == [1, 2, 3]                     # 1-based
    assert all(float(r[2]) >= 0 for r in rows[1:])
    assert metrics.v_measure_score(y, labels) > 0.99
    summary = json.load(open(tmp_path / 'out' / 'labels.json'))
    assert summary['k'] == 3 and summary['method'] == 'kmeans' and summary['seed'] == 0
    assert summary['k_selection']['chosen'] == 3
    assert summary['metrics']['n'] == 238 and summary['metrics']['v_measure'] > 0.99
    assert sum(summary['sizes'].values()) == 240 and set(summary['sizes']) == {'1', '2', '3'}
    assert [r['k'] for r in summary['sweep']] == [2, 3, 4, 5, 6]
    assert set(summary['representatives']) == {'1', '2', '3'}
    assert summary['representatives']['1'] in files
    assert sorted(n for n in os.listdir(tmp_path / 'plots') if n.endswith('.png')) == [
        'cluster_sizes.png', 'contingency.png', 'embedding.png', 'k_selection.png',
        'metrics_vs_k.png']
    # fixed k, another method, no truth; no leftovers beside the output
    status, err = run_cli(['-q', 'cluster', npy, '--k', '3', '--method', 'gmm', '--out', str(out)],
                          capsys)
    assert status == 0, err
    assert json.load(open(tmp_path / 'out' / 'labels.json'))['method'] == 'gmm'
    assert sorted(os.listdir(tmp_path / 'out')) == ['labels.csv', 'labels.json']
    status, err = run_cli(['-q', 'cluster', npy, '--k', '3', '--method', 'spectral', '--out', str(out)],
                          capsys)
    assert status == 0, err
    summary = json.load(open(tmp_path / 'out' / 'labels.json'))
    assert summary['method'] == 'spectral' and summary['k'] == 3


def bad_case(tmp_path, case):
    """Set up one bad input; return (argv, text the one-line error must hold)."""
    X, y = blobs(20, 2, seed=8)
    npy, files = write_features(tmp_path / 'emb', X)
    if case == 'k0':
        return [npy, '--k', '0'], 'k=0: must be at least 1'
    if case == 'k_too_big':
        return [npy, '--k', '21'], 'more clusters than items (20)'
    if case == 'k_word':
        return [npy, '--k', 'many'], '--k many'
    if case == 'missing_npy':
        return [str(tmp_path / 'nope.npy'), '--k', '2'], 'nope.npy: no such features file'
    if case == 'unreadable_npy':
        p = tmp_path / 'junk.npy'
        p.write_bytes(b'this is not numpy')
        return [str(p), '--k', '2'], 'junk.npy: not a readable .npy array'
    if case == 'not_2d':
        p = tmp_path / 'emb' / 'features.npy'
        np.save(p, np.zeros((20, 2, 2), np.float32))
        return [str(p), '--k', '2'], 'expected a 2-D array'
    if case == 'nan':
        X[3, 1] = np.nan
        np.save(npy, X)
        return [npy, '--k', '2'], 'features.npy: row 3 holds NaN or infinite values'
    if case == 'csv_length':
        write_features(tmp_path / 'emb', X, files[:-1])
        return [npy, '--k', '2'], 'names 19 rows but'
    if case == 'truth_unknown_file':
        t = write_truth(tmp_path / 't.csv', files[:3] + ['/elsewhere/other.mrc'], 'aaab')
        return [npy, '--k', '2', '--truth', t], 't.csv: names /elsewhere/other.mrc, which is not'
    raise AssertionError(case)


@pytest.mark.parametrize('case', ['k0', 'k_too_big', 'k_word', 'missing_npy', 'unreadable_npy',
                                  'not_2d', 'nan', 'csv_length', 'truth_unknown_file'])
def test_cli_bad_input_one_line_error(tmp_path, capsys, case):
    argv, expect = bad_case(tmp_path, case)
    out = tmp_path / 'labels.csv'
    status, err = run_cli(['cluster'] + argv + ['--out', str(out)], capsys)
    assert status == 2
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert expect in err
    assert not out.exists()


def test_truth_matching_by_path_then_name(tmp_path):
    files = ['/data/a/x.mrc', '/data/b/x.mrc', '/data/b/y.mrc']
    t = write_truth(tmp_path / 't.csv', ['/data/a/x.mrc', 'y.mrc'], ['ribo', 'prot'])
    assert cluster_files.match_truth(files, t) == ['ribo', None, 'prot']
    t = write_truth(tmp_path / 't2.csv', ['x.mrc'], ['ribo'])
    with pytest.raises(DeepClusterError, match='x.mrc matches 2 input files by name'):
        cluster_files.match_truth(files, t)


def test_features_without_csv_are_named_by_row(tmp_path):
    np.save(tmp_path / 'f.npy', np.zeros((3, 2), np.float32))
    X, files = features_io.load_features(str(tmp_path / 'f.npy'))
    assert files == ['row0', 'row1', 'row2'] and X.dtype == np.float32


def test_features_csv_rows_in_any_order(tmp_path):
    np.save(tmp_path / 'features.npy', np.zeros((3, 2), np.float32))
    (tmp_path / 'features.csv').write_text('row,file\n2,c.mrc\n0,a.mrc\n1,b.mrc\n')
    assert features_io.load_features(str(tmp_path / 'features.npy'))[1] == ['a.mrc', 'b.mrc', 'c.mrc']
    (tmp_path / 'features.csv').write_text('row,file\n0,a.mrc\n0,b.mrc\n1,c.mrc\n')
    with pytest.raises(DeepClusterError, match='rows must be numbered 0..2 once each'):
        features_io.load_features(str(tmp_path / 'features.npy'))


def test_cli_gallery_shows_members_nearest_each_centroid(tmp_path, capsys):
    from deepcluster.core.inference.volumes import write_volume
    X, y = blobs(30, 2, seed=3)
    npy, files = write_features(tmp_path / 'emb', X)
    for f, c in zip(files, y):
        vol = np.zeros((8, 8, 8), np.float32)
        vol[4, 2:6, 2:6] = 1.0 if c == 0 else -1.0
        write_volume(f, vol, 10.0)
    status, err = run_cli(['-q', 'cluster', npy, '--k', '2', '--out', str(tmp_path / 'l.csv'),
                           '--plots', str(tmp_path / 'plots'), '--embedding', 'pca'], capsys)
    assert status == 0, err
    assert (tmp_path / 'plots' / 'gallery.png').stat().st_size > 1000
    gallery = cluster_files.gallery(files, np.asarray(y), np.zeros(len(y)), per_class=3)
    assert sorted(gallery) == ['class 1: %d items' % (y == 0).sum(), 'class 2: %d items' % (y == 1).sum()]
    assert all(len(v) == 3 and v[0].shape == (8, 8) for v in gallery.values())
    assert gallery['class 1: %d items' % (y == 0).sum()][0].max() == 1.0
