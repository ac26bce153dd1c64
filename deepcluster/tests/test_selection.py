"""The 2-D map (computed once, cached, every item placed) and selections on it,
in core and through ``deepcluster select``."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis import embedding_map as em
from deepcluster.core.analysis import selection as sel


def blobs(n=60, k=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    X = rng.normal(size=(n, 32)) + 8 * np.eye(32)[labels]
    return X.astype(np.float32), labels + 1


@pytest.mark.parametrize('method', ['pca', 'tsne', 'umap'])
def test_map_methods_give_every_item_a_position(method):
    X, _ = blobs()
    m = em.compute_map(X, method, seed=0)
    assert m.xy.shape == (60, 2) and np.isfinite(m.xy).all()
    assert m.method == method and len(m.drawn) == 60
    assert m.describe().endswith('of 60 items')


def test_large_sets_draw_a_subsample_and_place_the_rest():
    X, labels = blobs(300)
    m = em.compute_map(X, 'pca', max_points=100)
    assert len(m.drawn) == 100 and m.xy.shape == (300, 2)
    assert '100 random of 300' in m.describe()
    # placed items land among their own class: each class's positions stay apart
    centres = np.array([m.xy[labels == c].mean(0) for c in (1, 2, 3)])
    spread = max(np.linalg.norm(m.xy[labels == c] - centres[c - 1], axis=1).mean() for c in (1, 2, 3))
    assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)) > 2 * spread


def test_identical_rows_and_tiny_sets():
    X = np.ones((20, 32), np.float32)
    assert np.isfinite(em.compute_map(X, 'tsne').xy).all()
    m = em.compute_map(np.random.default_rng(0).normal(size=(3, 32)), 'tsne')
    assert m.method == 'pca'             # too few for a neighbourhood map
    with pytest.raises(DeepClusterError, match='NaN'):
        em.compute_map(np.full((5, 4), np.nan), 'pca')
    with pytest.raises(DeepClusterError, match='use one of'):
        em.compute_map(X, 'mds')


def test_map_is_cached_until_the_features_change(tmp_path):
    X, _ = blobs()
    m1, c1 = em.cached_map(X, str(tmp_path), 'tsne')
    m2, c2 = em.cached_map(X, str(tmp_path), 'tsne')
    assert (c1, c2) == (False, True)
    np.testing.assert_array_equal(m1.xy, m2.xy)
    _, c3 = em.cached_map(X + 1, str(tmp_path), 'tsne')
    assert not c3
    (tmp_path / 'map_pca.npz').write_bytes(b'garbage')
    _, c4 = em.cached_map(X, str(tmp_path), 'pca')       # unreadable cache: recomputed
    assert not c4


def test_polygon_box_classes():
    xy = np.array([[0, 0], [1, 1], [2, 2], [5, 5], [1, 0]], float)
    square = [(-0.5, -0.5), (1.5, -0.5), (1.5, 1.5), (-0.5, 1.5)]
    assert sel.in_polygon(xy, square).tolist() == [True, True, False, False, True]
    assert sel.in_polygon(xy, square[::-1]).tolist() == [True, True, False, False, True]
    assert sel.in_polygon(xy, [(0, 0), (2, 0), (0, 2)]).tolist()[0]      # a vertex counts
    assert sel.in_box(xy, (2.5, 6), (0.5, 0.5)).tolist() == [False, True, True, False, False]
    assert sel.in_classes(['1', '2', '3'], [2, 3]).tolist() == [False, True, True]
    assert sel.nearest(xy, (4.6, 4.9)) == 3 and sel.nearest(xy, (4.6, 4.9), among=[0, 1]) == 1
    with pytest.raises(DeepClusterError, match='at least 3 points'):
        sel.in_polygon(xy, [(0, 0), (1, 1)])


def test_new_labels_subset_split_merge():
    labels = np.array([1, 1, 1, 2, 2, 3])
    mask = np.array([0, 1, 1, 0, 0, 1], bool)
    assert sel.new_labels(labels, mask, 'subset').tolist() == [0, 1, 1, 0, 0, 2]
    # split: the selected items become a class of their own (here the largest: 1)
    assert sel.new_labels(labels, mask, 'split').tolist() == [3, 1, 1, 2, 2, 1]
    # merge: classes 1 and 3 (touched) into one
    assert sel.new_labels(labels, mask, 'merge').tolist() == [1, 1, 1, 2, 2, 1]
    with pytest.raises(DeepClusterError, match='empty'):
        sel.new_labels(labels, np.zeros(6, bool), 'subset')
    with pytest.raises(DeepClusterError, match='only class 2'):
        sel.new_labels(labels, labels == 2, 'merge')
    with pytest.raises(DeepClusterError, match='every item'):
        sel.new_labels(labels, np.ones(6, bool), 'split')


def test_selection_csv_roundtrip(tmp_path):
    fn = tmp_path / 'sel.csv'
    assert sel.write_selection_csv(fn, ['a.mrc', 'b.mrc', 'c.mrc'], [2, 0, 1], ids=[7, 8, 9]) == 2
    files, labels, ids = sel.read_selection_csv(str(fn))
    assert files == ['a.mrc', 'c.mrc'] and labels.tolist() == [2, 1] and ids == [7, 9]
    (tmp_path / 'bad.csv').write_text('file,label\na.mrc,x\n')
    with pytest.raises(DeepClusterError, match='whole numbers'):
        sel.read_selection_csv(str(tmp_path / 'bad.csv'))
    (tmp_path / 'map.csv').write_text('file,x,y,cluster\n')
    with pytest.raises(DeepClusterError, match='file,label'):
        sel.read_selection_csv(str(tmp_path / 'map.csv'))


def _cli(*args):
    return subprocess.run([sys.executable, '-m', 'deepcluster', *map(str, args)],
                          capture_output=True, text=True)


def test_cli_select(tmp_path):
    X, labels = blobs(30)
    m = em.compute_map(X, 'pca')
    files = ['/data/s%02d.mrc' % i for i in range(30)]
    em.write_map_csv(tmp_path / 'map.csv', files, m.xy, labels, drawn=m.drawn)
    out = tmp_path / 'sel.csv'
    # a polygon around class 2 (negative coordinates in one quoted argument)
    pts = m.xy[labels == 2]
    lo, hi = pts.min(0) - 0.01, pts.max(0) + 0.01
    poly = '%g,%g %g,%g %g,%g %g,%g' % (lo[0], lo[1], hi[0], lo[1], hi[0], hi[1], lo[0], hi[1])
    r = _cli('select', tmp_path / 'map.csv', '--polygon', poly, '--out', out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    assert {row['file'] for row in rows} == {f for f, c in zip(files, labels) if c == 2}
    r = _cli('select', tmp_path / 'map.csv', '--classes', 1, 3, '--mode', 'merge', '--out', out)
    assert r.returncode == 0, r.stderr
    assert sorted({row['label'] for row in csv.DictReader(open(out))}) == ['1', '2']
    for args, msg in ((['--classes', 9], 'not in'), (['--polygon', '0,0 1,1'], 'at least 3 points'),
                      (['--box', 1e6, 1e6, 2e6, 2e6], 'the selection is empty'), ([], 'say what')):
        r = _cli('select', tmp_path / 'map.csv', *args, '--out', tmp_path / 'x.csv')
        assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    r = _cli('select', tmp_path / 'nope.csv', '--classes', 1, '--out', tmp_path / 'x.csv')
    assert r.returncode == 2 and 'no such map file' in r.stderr
