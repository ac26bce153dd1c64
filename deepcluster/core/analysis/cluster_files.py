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


def write_cluster_outputs(out_csv, files, labels, dist, summary):
    """labels.csv (file,label 1-based,distance) and <stem>.json, both atomically."""
    import csv
    from deepcluster.core.inference.volumes import atomic_path
    with atomic_path(out_csv) as tmp:
        with open(tmp, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label', 'distance'])
            for fn, lab, d in zip(files, (labels + 1).tolist(), dist.tolist()):
                w.writerow([fn, lab, '' if d != d else '%.6g' % d])
    js = os.path.splitext(out_csv)[0] + '.json'
    with atomic_path(js) as tmp:
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=1)
    return js


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
