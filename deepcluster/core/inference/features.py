"""The features file pair: ``features.npy`` (N x 32 float32) and the ``row,file``
CSV beside it that names each row, written and read together."""
import csv
import logging
import os

import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis.cluster import check_features
from deepcluster.core.inference.volumes import atomic_path

log = logging.getLogger(__name__)


def features_csv_path(npy_path):
    base = npy_path[:-4] if npy_path.lower().endswith('.npy') else npy_path
    return base + '.csv'


def write_features(out, feats, files):
    """``out`` (.npy) and ``<out>.csv`` (row,file), both atomically."""
    out = os.fspath(out)
    if not out.lower().endswith('.npy'):
        raise DeepClusterError('--out %s: expected a .npy file name' % out)
    with atomic_path(out) as tmp:
        with open(tmp, 'wb') as f:
            np.save(f, np.ascontiguousarray(feats, np.float32))
        with atomic_path(features_csv_path(out)) as tmpc:
            with open(tmpc, 'w', newline='') as f:
                w = csv.writer(f)
                w.writerow(['row', 'file'])
                for i, p in enumerate(files):
                    w.writerow([i, p])
    return out


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
