"""The features file pair: ``features.npy`` (N x 32 float32) and the ``row,file``
CSV beside it that names each row, written and read together."""
import csv
import logging
import os

import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis.cluster import check_features
from deepcluster.core.outputs import atomic_paths, sha256_file

log = logging.getLogger(__name__)


def features_csv_path(npy_path):
    base = npy_path[:-4] if npy_path.lower().endswith('.npy') else npy_path
    return base + '.csv'


def write_features(out, feats, files):
    """``out`` (.npy) and ``<out>.csv`` (row,file,npy_sha256: the hash of the .npy on
    the first row, which ``load_features`` checks), committed together (see
    ``core.outputs.commit``): a kill or a concurrent run never leaves one run's csv
    beside another's npy. Non-finite features are an error, not an output."""
    out = os.fspath(out)
    if not out.lower().endswith('.npy'):
        raise DeepClusterError('--out %s: expected a .npy file name' % out)
    feats = np.ascontiguousarray(feats, np.float32)
    bad = np.nonzero(~np.isfinite(feats).all(axis=1))[0] if feats.ndim == 2 else []
    if len(bad):
        raise DeepClusterError('%s: its features are not finite (%d files; are its values '
                               'extreme?); nothing was written' % (files[int(bad[0])], len(bad)))
    with atomic_paths(out, features_csv_path(out), ours=is_features_output) as (tmp, tmpc):
        with open(tmp, 'wb') as f:
            np.save(f, feats)
        digest = sha256_file(tmp)
        with open(tmpc, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['row', 'file', 'npy_sha256'])
            for i, p in enumerate(files):
                w.writerow([i, p, digest if i == 0 else ''])
    return out


def is_features_output(path):
    """Whether ``path`` (the .npy or its .csv) belongs to an output of ``embed``: its
    csv has the row,file columns (a hash column since the pair is checked)."""
    csv_path = features_csv_path(path) if path.lower().endswith('.npy') else path
    try:
        with open(csv_path, newline='', encoding='utf-8') as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header in (['row', 'file', 'npy_sha256'], ['row', 'file'])


def claim_features_output(out):
    """``--out`` of embed may be written: new, or a previous embed output (both files)."""
    from deepcluster.core.outputs import check_out_path, claim_output
    check_out_path(out)
    if not os.fspath(out).lower().endswith('.npy'):
        raise DeepClusterError('--out %s: expected a .npy file name' % out)
    p = claim_output(out, 'embed', '--out', ours=is_features_output)
    claim_output(features_csv_path(p), 'embed', '--out (its .csv)', ours=is_features_output)
    return p


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
    from deepcluster.core.inference.volumes import open_text
    digest = None
    with open_text(csv_path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not {'row', 'file'} <= set(header):
            raise DeepClusterError('%s: expected a CSV with columns row,file' % csv_path)
        ir, jf = header.index('row'), header.index('file')
        ih = header.index('npy_sha256') if 'npy_sha256' in header else None
        rows, files = [], []
        try:
            for r in reader:
                if r:
                    rows.append(int(r[ir]))
                    files.append(r[jf])
                    if ih is not None and digest is None and len(r) > ih and r[ih]:
                        digest = r[ih]
        except (IndexError, ValueError, csv.Error):
            raise DeepClusterError('%s: line %d: expected a row number and a file name'
                                   % (csv_path, len(rows) + 2))
    if digest is not None and digest != sha256_file(npy):
        raise DeepClusterError('%s and %s are not from the same run (an interrupted or concurrent '
                               'embed?); run embed again' % (npy, csv_path))
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
