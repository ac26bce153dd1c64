"""The files side of clustering: true labels matched to the feature rows,
labels.csv + its JSON summary, the gallery of class members."""
import json
import os

import numpy as np

from deepcluster.core import DeepClusterError


def match_truth(files, truth_csv):
    """Per-row true labels (None where the truth file has no entry) from a labels.csv.

    Truth entries match input files by exact path, else by file name. A truth
    entry that names no input file is an error (a wrong truth file, most likely).
    """
    from deepcluster.core.inference.volumes import read_labels
    table = read_labels(truth_csv)
    index = {f: i for i, f in enumerate(files)}
    by_base = {}
    for i, f in enumerate(files):
        by_base.setdefault(os.path.basename(f), []).append(i)
    truth = [None] * len(files)
    for f, lab in table.items():
        if f in index:
            truth[index[f]] = lab
            continue
        hits = by_base.get(os.path.basename(f), [])
        if len(hits) == 1:
            truth[hits[0]] = lab
        elif len(hits) > 1:
            raise DeepClusterError('%s: %s matches %d input files by name; give full paths'
                                   % (truth_csv, f, len(hits)))
        else:
            raise DeepClusterError('%s: names %s, which is not among the %d input items'
                                   % (truth_csv, f, len(files)))
    return truth


PLOT_NAMES = ('embedding.png', 'cluster_sizes.png', 'contingency.png', 'metrics_vs_k.png',
              'k_selection.png', 'gallery.png', 'map.csv')


def cluster_json_path(out_csv):
    return os.path.splitext(os.fspath(out_csv))[0] + '.json'


def is_cluster_output(path):
    """Whether ``path`` (labels.csv or its .json) is an output of ``cluster``: the
    JSON beside it is our summary."""
    try:
        with open(cluster_json_path(path)) as f:
            js = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(js, dict) and ('labels_sha256' in js or {'method', 'sizes'} <= set(js))


def _is_plots_folder(path):
    """A --plots folder from before outputs were stamped: our figure names only."""
    try:
        return all(n in PLOT_NAMES for n in os.listdir(path))
    except OSError:
        return False


def claim_cluster_outputs(out_csv, plots=None):
    """(labels.csv, its .json, the plots folder or None) if ``cluster`` may write them:
    new, or previous outputs of cluster (``core.outputs.claim_output``)."""
    from deepcluster.core.outputs import claim_output
    if not os.fspath(out_csv).lower().endswith('.csv'):
        raise DeepClusterError('--out %s: expected a .csv file name (e.g. labels.csv)' % out_csv)
    out = claim_output(out_csv, 'cluster', '--out', ours=is_cluster_output)
    js = claim_output(cluster_json_path(out), 'cluster', '--out (its .json)', ours=is_cluster_output)
    pl = claim_output(plots, 'cluster', '--plots', ours=_is_plots_folder, folder=True) if plots else None
    return out, js, pl


def write_cluster_outputs(out_csv, files, labels, dist, summary, plots=None, write_plots=None):
    """labels.csv (file,label 1-based,distance), <stem>.json (the summary, with the
    csv's sha256 that ``read_cluster_labels`` checks) and, given ``plots`` and
    ``write_plots(folder) -> [paths]``, the figures folder: all committed together
    (``core.outputs.commit``), so no kill or full disk leaves a csv without its json."""
    import csv
    from deepcluster.core.outputs import atomic_paths, mark_folder, sha256_file
    js = cluster_json_path(out_csv)
    finals = [out_csv, js] + ([plots] if plots else [])
    with atomic_paths(*finals, ours=lambda p: os.path.isdir(p) or is_cluster_output(p)) as tmps:
        if plots:
            os.makedirs(tmps[2])
            mark_folder(tmps[2], 'cluster')
            written = write_plots(tmps[2]) or []
            summary['plots'] = [os.path.join(os.path.abspath(plots), os.path.relpath(p, tmps[2]))
                                for p in written]
        with open(tmps[0], 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label', 'distance'])
            for fn, lab, d in zip(files, (labels + 1).tolist(), dist.tolist()):
                w.writerow([fn, lab, '' if d != d else '%.6g' % d])
        summary['labels_sha256'] = sha256_file(tmps[0])
        with open(tmps[1], 'w') as f:
            json.dump(summary, f, indent=1)
    return js


def read_cluster_labels(out_csv):
    """{file: 1-based label} from a cluster labels.csv, refusing one whose JSON summary
    names another csv (a mismatched pair) in one line."""
    import csv
    from deepcluster.core.inference.volumes import open_text
    from deepcluster.core.outputs import sha256_file
    if not os.path.isfile(out_csv):
        raise DeepClusterError('%s: no such labels file' % out_csv)
    try:
        with open(cluster_json_path(out_csv)) as f:
            want = json.load(f).get('labels_sha256')
    except (OSError, ValueError, AttributeError):
        want = None
    if want and want != sha256_file(out_csv):
        raise DeepClusterError('%s and %s are not from the same run (an interrupted cluster?); '
                               'run cluster again' % (out_csv, cluster_json_path(out_csv)))
    with open_text(out_csv) as f:
        try:
            return {r['file']: int(r['label']) for r in csv.DictReader(f)}
        except (KeyError, TypeError, ValueError, csv.Error):
            raise DeepClusterError('%s: expected a CSV with columns file,label (whole numbers)'
                                   % out_csv)


def gallery(files, labels, dist, per_class=6):
    """{'class N (size)': central slices of its members nearest the centroid}, for
    the members whose volume files exist (rows may name other things)."""
    from deepcluster.core.analysis.plots import central_slice
    from deepcluster.core.inference.volumes import read_volume
    out = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        idx = np.nonzero(labels == c)[0]
        idx = idx[np.argsort(dist[idx])][:per_class]
        slices = []
        for i in idx:
            if os.path.isfile(files[i]):
                try:
                    slices.append(central_slice(read_volume(files[i], check_finite=False)[0]))
                except DeepClusterError:
                    continue
        if slices:
            out['class %d: %d items' % (c + 1, int((labels == c).sum()))] = slices
    return out or None
