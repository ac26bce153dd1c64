"""Selections on the 2-D map, and what they become (the numerics behind the
interactive map viewer and ``deepcluster select``).

  in_polygon(xy, vertices) / in_box(xy, corner, corner) / in_classes(labels, classes)
      -> boolean mask over the items
  new_labels(labels, mask, mode) -> per-item class ids of the result
      (0 = not in the result):
        'subset' - the selected items, keeping their class;
        'split'  - every item, the selected ones moved to a new class;
        'merge'  - every item, all classes the selection touches merged into one.
  renumber(labels) -> ids 1..m by decreasing size (0 stays 0)
  write_selection_csv / read_selection_csv: selection.csv (file,label[,id]): the
      labels.csv format of the CLI, rows with label 0 left out; the
      "deepcluster - import selection" protocol reads it.
"""
import csv
import os

import numpy as np

from deepcluster.core import DeepClusterError

MODES = ('subset', 'split', 'merge')


def in_polygon(xy, vertices):
    """Items of ``xy`` (N x 2) inside the polygon ``vertices`` (M x 2, M >= 3;
    closed implicitly). Points on the edge count as inside."""
    from matplotlib.path import Path
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3:
        raise DeepClusterError('a polygon needs at least 3 points (x,y), got %d' % len(v))
    xy = np.asarray(xy, dtype=float)
    if len(xy) == 0:
        return np.zeros(0, bool)
    span = float(np.ptp(np.r_[xy, v], axis=0).max()) or 1.0
    return Path(v).contains_points(xy, radius=1e-9 * span) | \
        Path(v[::-1]).contains_points(xy, radius=1e-9 * span)


def in_box(xy, corner1, corner2):
    """Items inside the axis-aligned box with these two opposite corners."""
    xy = np.asarray(xy, dtype=float)
    (x0, y0), (x1, y1) = corner1, corner2
    lo = np.minimum([x0, y0], [x1, y1])
    hi = np.maximum([x0, y0], [x1, y1])
    return ((xy >= lo) & (xy <= hi)).all(axis=1)


def in_classes(labels, classes):
    """Items whose label is one of ``classes`` (compared as text: 2 == '2')."""
    want = {str(c) for c in classes}
    return np.array([str(v) in want for v in np.asarray(labels).tolist()], dtype=bool)


def nearest(xy, point, among=None):
    """Index of the item nearest ``point`` (optionally only ``among`` these indices)."""
    xy = np.asarray(xy, dtype=float)
    idx = np.arange(len(xy)) if among is None else np.asarray(among, dtype=np.int64)
    if len(idx) == 0:
        raise DeepClusterError('no items to pick from')
    d = ((xy[idx] - np.asarray(point, dtype=float)) ** 2).sum(axis=1)
    return int(idx[int(np.argmin(d))])


def renumber(labels):
    """Class ids 1..m, 1 = the largest class (ties: the smaller old id first); 0 stays 0."""
    labels = np.asarray(labels, dtype=np.int64)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    order = sorted(zip(-counts, ids))
    mapping = {int(old): new for new, (_, old) in enumerate(order, start=1)}
    return np.array([mapping.get(int(v), 0) for v in labels], dtype=np.int64)


def new_labels(labels, mask, mode='subset'):
    """Class ids (0 = left out) of the result of a selection ``mask`` on items
    with integer class ``labels`` (see the module doc for the modes), renumbered."""
    labels = np.asarray(labels, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    if labels.shape != mask.shape:
        raise DeepClusterError('selection of %d items for %d labels' % (len(mask), len(labels)))
    if mode not in MODES:
        raise DeepClusterError('selection mode %r: use one of %s' % (mode, ', '.join(MODES)))
    if not mask.any():
        raise DeepClusterError('the selection is empty')
    if mode == 'subset':
        out = np.where(mask, np.maximum(labels, 1), 0)
    elif mode == 'split':
        if mask.all():
            raise DeepClusterError('split: every item is selected; nothing would be left '
                                   'in the other classes')
        out = labels.copy()
        out[mask] = labels.max() + 1
    else:
        touched = np.unique(labels[mask])
        if len(touched) < 2:
            raise DeepClusterError('merge: the selection touches only class %d; select '
                                   'items of two classes or more' % touched[0])
        out = labels.copy()
        out[np.isin(labels, touched)] = touched.min()
    return renumber(out)


# ------------------------------------------------------------ selection.csv
def write_selection_csv(path, files, labels, ids=None):
    """selection.csv: file,label (and id when ``ids`` are given) for every item
    with label > 0, in item order; written atomically. Returns the row count."""
    from deepcluster.core.inference.volumes import atomic_path
    labels = np.asarray(labels, dtype=np.int64)
    if len(files) != len(labels) or (ids is not None and len(ids) != len(labels)):
        raise DeepClusterError('selection: %d files for %d labels' % (len(files), len(labels)))
    keep = np.nonzero(labels > 0)[0]
    if not len(keep):
        raise DeepClusterError('the selection is empty: nothing to write')
    with atomic_path(os.fspath(path)) as tmp:
        with open(tmp, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label'] + (['id'] if ids is not None else []))
            for i in keep.tolist():
                w.writerow([files[i], int(labels[i])] + ([int(ids[i])] if ids is not None else []))
    return len(keep)


def read_selection_csv(path):
    """Return (files, labels as int array, ids or None) from a selection.csv /
    labels.csv whose labels are positive whole numbers."""
    if not os.path.isfile(path):
        raise DeepClusterError('%s: no such selection file' % path)
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if not {'file', 'label'} <= set(reader.fieldnames or []):
            raise DeepClusterError('%s: expected a CSV with columns file,label (as written by '
                                   '"deepcluster select")' % path)
        rows = list(reader)
    if not rows:
        raise DeepClusterError('%s: the selection is empty' % path)
    try:
        labels = np.array([int(r['label']) for r in rows], dtype=np.int64)
        ids = [int(r['id']) for r in rows] if 'id' in rows[0] and all(r['id'] for r in rows) \
            else None
    except ValueError as e:
        raise DeepClusterError('%s: labels (and ids) must be whole numbers (%s)' % (path, e))
    if (labels < 1).any():
        raise DeepClusterError('%s: labels must be 1 or more' % path)
    return [r['file'] for r in rows], labels, ids
