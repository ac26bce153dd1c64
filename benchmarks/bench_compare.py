"""Which model clusters better? Several models on the same test sets, several seeds.

One bench_quality test set moves by up to 0.03-0.04 between seeds, more than most
differences between candidate models, so a comparison needs several. Every
scenario is simulated once per seed (50 per class, seeds never used in training)
and embedded by each model; k-means at the true k; mean V-measure and its
standard error over the seeds, per scenario and over all of them.

    python benchmarks/bench_compare.py default accurate OLD.pt [--seeds 1 2 3 4]
    python benchmarks/bench_compare.py default:fp32 default:bf16 --out results/bench_compare_precision.json

Models are files or shipped names, each optionally with ``:fp32`` or ``:bf16`` (the
network's arithmetic; default: what ``embed --precision auto`` picks here). The
previous default, for instance: ``git show 9c1ac95:deepcluster/models/default.pt > old.pt``.
Result: benchmarks/results/bench_compare.json (about 5 min for three models on 2 cores).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_quality as bq                                             # noqa: E402
from deepcluster.core.analysis import cluster
from deepcluster.core.analysis import evaluation  # noqa: E402
from deepcluster.core.device import PRECISIONS                        # noqa: E402
from deepcluster.core.inference.embed import Embedder, embed_arrays              # noqa: E402
from deepcluster.core.model.network import model_sha256                      # noqa: E402
from deepcluster.core.datamodel.structures import load_structures, procedural_templates  # noqa: E402
from deepcluster.core.inference.volumes import atomic_path                       # noqa: E402

RESULT = os.path.join(HERE, 'results', 'bench_compare.json')


def scenarios(root):
    """name: (voxel size, seed -> (volumes, truth)); seed offsets keep the sets apart."""
    maps = os.path.join(root, 'maps_10A')
    shrec10 = load_structures([os.path.join(maps, s + '.mrc') for s in bq.SHREC], 10.0)
    shrec13 = load_structures([os.path.join(maps, s + '.mrc') for s in bq.SHREC], 13.68)
    ribo = load_structures([os.path.join(maps, s + '.mrc') for s in ('4v4r', '4v7r')], 10.0)
    mb = ('4v4r', '4v7r')
    return {
        'shrec': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9000 + s)),
        'SNR 0.1-0.3': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9100 + s, snr=(0.1, 0.3))),
        'SNR 0.3-1': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9200 + s, snr=(0.3, 1.0))),
        'SNR 1-3': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9250 + s, snr=(1.0, 3.0))),
        'SNR 10-100': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9300 + s, snr=(10.0, 100.0))),
        'noise-free': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9400 + s, snr=(1e4, 1e4))),
        'membrane': (10.0, lambda s: bq.simulate(ribo, 10.0, 40, 9500 + s, membrane_bound=mb)),
        'membrane, any side': (10.0, lambda s: bq.simulate(ribo, 10.0, 40, 9550 + s, membrane_bound=mb,
                                                            mb_random_side=1.0)),
        'unseen': (10.0, lambda s: bq.simulate(procedural_templates(10, 10.0, seed=800 + s), 10.0, 40, 9600 + s)),
        '13.68 A': (13.68, lambda s: bq.simulate(shrec13, 13.68, 30, 9700 + s)),
        'picking error 2': (10.0, lambda s: bq.simulate(shrec10, 10.0, 40, 9800 + s, max_shift=2.0)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('models', nargs='+', help='model files or shipped names (default, accurate)')
    ap.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3, 4])
    ap.add_argument('--out', default=RESULT)
    a = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    specs = [m.rsplit(':', 1) if m.rsplit(':', 1)[-1] in PRECISIONS else [m, 'auto'] for m in a.models]
    keys = [os.path.basename(p) + ('' if prec == 'auto' else ':' + prec) for p, prec in specs]
    if len(set(keys)) < len(keys):
        raise SystemExit('two models with one file name: rename one')
    paths = {k: p for k, (p, _) in zip(keys, specs)}         # key: shipped name or file name
    embs = {k: Embedder.from_file(p, precision=prec) for k, (p, prec) in zip(keys, specs)}
    a.models = list(embs)
    v = {m: {} for m in a.models}
    for name, (voxel, make) in scenarios(bq.structures_root()).items():
        for seed in a.seeds:
            vols, truth = make(seed)
            for m, emb in embs.items():
                X = embed_arrays(vols, emb, emb.config, voxel_size=voxel, batch_size=128)
                labels = cluster.cluster_features(X, len(set(truth)), 'kmeans', seed=0, scores=False)[0]
                v[m].setdefault(name, []).append(evaluation.evaluate(truth, labels)['v_measure'])
        print('%-20s' % name + ''.join('  %s %.3f +- %.3f' % (m, np.mean(v[m][name]),
                                                           np.std(v[m][name]) / np.sqrt(len(a.seeds)))
                                       for m in a.models), flush=True)
    res = {'what': 'k-means at the true k on the same test sets (50 per class) for each model; mean '
                   'V-measure and its standard error over the seeds',
           'seeds': a.seeds, 'seconds': round(time.time() - t0, 1),
           'models': {m: {'file': paths[m], 'sha256': model_sha256(paths[m]), 'arch_params': embs[m].config.get('arch_params'),
                          'precision': str(embs[m].dtype).replace('torch.', ''),
                          'mean': round(float(np.mean([np.mean(x) for x in v[m].values()])), 4),
                          'scenarios': {n: {'mean': round(float(np.mean(x)), 4),
                                            'sem': round(float(np.std(x) / np.sqrt(len(x))), 4),
                                            'per_seed': [round(y, 4) for y in x]} for n, x in v[m].items()}}
                      for m in a.models}}
    print('%-20s' % 'mean' + ''.join('  %s %.4f' % (m, res['models'][m]['mean']) for m in a.models))
    with atomic_path(a.out) as tmp, open(tmp, 'w') as f:     # creates the folder too
        json.dump(res, f, indent=1)


if __name__ == '__main__':
    main()
