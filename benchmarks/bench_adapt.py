"""``embed --adapt``: each adaptation mode against ``none``.

Quality: k-means V-measure at the true k (and the realistic benchmark's own
scores, rare-class F1 included) of the shipped default model's features, un-adapted
and adapted, on
- the independent realistic benchmark (``benchmarks/realistic``: kinds paper,
  unseen, rare at 13.68 A; report seeds 1 and 2; hyper-parameters were chosen on
  validation seeds 100+ only);
- the cellular scene of ``bench_physical`` at 13.68 A (``--sets physical:SEED``);
- source-domain scenarios of ``bench_quality`` (the data model's own test sets:
  shrec, membrane, unseen; 50 per class).
Cost: time and peak memory (RSS) of adapting 1,000 and 10,000 subtomograms read
from files on this machine's CPU threads (``--parts cost``).

Writes benchmarks/results/bench_adapt.json.
"""
import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from deepcluster.core.analysis import cluster, evaluation                          # noqa: E402
from deepcluster.core.inference import adapt                                        # noqa: E402
from deepcluster.core.inference.embed import Embedder, embed_arrays                 # noqa: E402
from deepcluster.core.model.network import load_model, model_sha256, resolve_model_path  # noqa: E402

RESULTS = os.path.join(HERE, 'results')
REPORT_SEEDS = (1, 2)
KINDS = ('paper', 'unseen', 'rare')


# ------------------------------------------------------------------ test sets
def realistic_set(kind, seed, voxel=13.68):
    from realistic import make_set
    d = make_set(kind, seed, voxel_size=voxel)
    return np.asarray(d['volumes'], np.float32), np.asarray(d['labels']), float(d['voxel_size'])


def physical_set(seed, voxel=13.68, cache='/tmp/bench_adapt_physical'):
    """bench_physical's cellular scene (its own simulator, 20 per class), saved once."""
    folder = os.path.join(cache, 'seed%d_%g' % (seed, voxel))
    from bench_quality import SHREC
    from deepcluster.core.inference.volumes import read_volume
    classes = SHREC + ['negative']          # bench_physical's default classes, 20 each, in this order
    if len(glob.glob(os.path.join(folder, 'phys_*.mrc'))) != 20 * len(classes):
        subprocess.run([sys.executable, os.path.join(HERE, 'bench_physical.py'), '--context', '--contrast', '0.03',
                        '--voxel-size', str(voxel), '--seed', str(seed), '--save', folder,
                        '--out', folder + '.json'], cwd=REPO, stdout=subprocess.DEVNULL)   # (only its files are used)
    files = sorted(glob.glob(os.path.join(folder, 'phys_*.mrc')))
    truth = np.repeat(classes, 20)
    vols = np.stack([read_volume(f)[0] for f in files]).astype(np.float32)
    return vols, truth, float(voxel)


def source_sets():
    """The data model's own test sets, as bench_quality makes them."""
    import bench_quality as bq
    from deepcluster.core.datamodel.structures import load_structures, procedural_templates
    maps = os.path.join(bq.structures_root(), 'maps_10A')
    shrec = load_structures([os.path.join(maps, s + '.mrc') for s in bq.SHREC], 10.0)
    ribo = load_structures([os.path.join(maps, s + '.mrc') for s in ('4v4r', '4v7r')], 10.0)
    return {
        'shrec': lambda: (*bq.simulate(shrec, 10.0, 40, bq.TEST_SEED), 10.0),
        'membrane': lambda: (*bq.simulate(ribo, 10.0, 40, bq.TEST_SEED + 1, membrane_bound=('4v4r', '4v7r')), 10.0),
        'unseen': lambda: (*bq.simulate(procedural_templates(10, 10.0, seed=777), 10.0, 40, bq.TEST_SEED + 2), 10.0),
    }


# ------------------------------------------------------------------ one run
def run_mode(model, config, vols, voxel, mode, seed=0, **kw):
    """(features, features of the adapted model whatever the guard said, adaptation
    report) of ``vols`` with ``mode``."""
    t0 = time.time()
    src = adapt.VolumeSource.from_arrays(vols, voxel, config)
    res = adapt.adapt_model(model, config, src, mode, seed=seed, progress=mode == 'full', **kw)
    emb = Embedder(res.model, res.config, 'cpu', 'fp32')
    X = embed_arrays(vols, emb, emb.config, voxel_size=voxel, batch_size=64)
    X2 = X
    if res.adapted is not None and not res.accepted:
        X2 = embed_arrays(vols, Embedder(res.adapted, config, 'cpu', 'fp32'), config, voxel_size=voxel, batch_size=64)
    rep = dict(res.report, seconds_total=round(time.time() - t0, 1))
    rep.pop('base_model', None)
    return X, X2, rep


def kmeans_v(X, truth, seed=0):
    lab = cluster.cluster_features(X, len(set(truth)), 'kmeans', seed=seed, scores=False)[0]
    return round(float(evaluation.evaluate(truth, lab)['v_measure']), 4)


def quality(model, config, sets, modes, variants):
    """{set: {mode: scores}} for each named set loader."""
    out = {}
    for name, (load, kind) in sets.items():
        t0 = time.time()
        vols, truth, voxel = load()
        row = {'n': int(len(truth)), 'k': int(len(set(truth)))}
        for mode in modes:
            kw = variants.get(mode, {})
            X, X2, rep = run_mode(model, config, vols, voxel, mode.split(':')[0], **kw)
            r = {'v_measure': kmeans_v(X, truth), 'accepted': rep.get('accepted'),
                 'separability': rep.get('separability'), 'seconds': rep['seconds_total']}
            if 'finetune' in rep:
                r['steps'] = rep['finetune']['steps']
            if kind:
                from realistic import score
                r['realistic_score'] = {k: (round(v, 4) if isinstance(v, float) else v)
                                        for k, v in score(X, list(truth), kind).items()}
            if mode != 'none':      # what the adaptation alone gave, whatever the guard said
                r['v_measure_unguarded'] = kmeans_v(X2, truth)
                if kind:
                    from realistic import score
                    r['realistic_score_unguarded'] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                      for k, v in score(X2, list(truth), kind).items()}
            row[mode] = r
            print('  %-22s %-10s V %.4f%s  (%.0f s)' % (name, mode, r['v_measure'],
                  '' if r['accepted'] in (None, True) else ' (guard kept none; unguarded %.4f)'
                  % r.get('v_measure_unguarded', float('nan')), r['seconds']), flush=True)
        row['seconds'] = round(time.time() - t0, 1)
        out[name] = row
    return out


def apply_guard(q, margin):
    """Each adapted row's outcome under the guard with ``margin`` (from its recorded
    silhouettes and unguarded scores): 'guarded' {accepted, v_measure, realistic_score}."""
    for row in q.values():
        for mode, r in row.items():
            if not isinstance(r, dict) or mode == 'none' or 'v_measure_unguarded' not in r:
                continue
            sep = r.get('separability') or {}
            ok = sep['after'] >= sep['before'] - margin if sep else bool(r.get('accepted'))
            g = {'accepted': ok, 'margin': margin,
                 'v_measure': r['v_measure_unguarded'] if ok else row['none']['v_measure']}
            if 'realistic_score' in row['none']:
                g['realistic_score'] = r['realistic_score_unguarded'] if ok else row['none']['realistic_score']
            r['guarded'] = g
    return q


def _v(r, guarded):
    return r['guarded']['v_measure'] if guarded and 'guarded' in r else r['v_measure']


def _rare_f1(r, guarded):
    sc = r['guarded'].get('realistic_score') if guarded and 'guarded' in r else r.get('realistic_score')
    if not sc:
        return None
    return ((sc.get('rare') or {}).get('at_true_k') or {}).get('f1')


def summarise(q, modes):
    apply_guard(q, adapt.GUARD_MARGIN)
    s = {'guard_margin': adapt.GUARD_MARGIN}
    for mode in modes:
        for key, guarded in (('unguarded', False), ('guarded', True)) if mode != 'none' else (('', False),):
            rows = [row for row in q.values() if mode in row]
            vs = [(_v(row[mode], guarded) if guarded else row[mode].get('v_measure_unguarded', row[mode]['v_measure']))
                  for row in rows]
            d = [v - row['none']['v_measure'] for v, row in zip(vs, rows)]
            ent = {'mean_v': round(float(np.mean(vs)), 4), 'sd_v': round(float(np.std(vs)), 4),
                   'mean_delta_vs_none': round(float(np.mean(d)), 4), 'min_delta_vs_none': round(float(np.min(d)), 4),
                   'max_delta_vs_none': round(float(np.max(d)), 4), 'n_sets': len(vs)}
            if guarded:
                ent['accepted'] = sum(bool(row[mode].get('guarded', {}).get('accepted')) for row in rows)
            if mode != 'none' and not guarded:
                f1 = [(row[mode].get('realistic_score_unguarded') or {}) for row in rows]
                f1 = [_rare_f1({'realistic_score': sc}, False) for sc in f1]
            else:
                f1 = [_rare_f1(row[mode], guarded) for row in rows]
            f1 = [x for x in f1 if x is not None]
            if f1:
                ent['rare_f1'] = [round(float(x), 4) for x in f1]
            s[mode + (':' + key if key else '')] = ent
    return s


# ------------------------------------------------------------------ minimum set size
def min_n(model, config, load, sizes=(25, 50, 100, 200), repeats=3):
    """BatchNorm statistics from n of the set's subtomograms, applied to all: the
    k-means V-measure and the mean cosine of the features to those from the whole
    set (how many a set needs before its statistics are its own, not noise)."""
    import copy
    vols, truth, voxel = load()
    full_src = adapt.VolumeSource.from_arrays(vols, voxel, config)
    ref = adapt.reestimate_bn(copy.deepcopy(model), full_src, progress=False)
    Xref = embed_arrays(vols, Embedder(ref, config, 'cpu', 'fp32'), config, voxel_size=voxel)
    X0 = embed_arrays(vols, Embedder(model, config, 'cpu', 'fp32'), config, voxel_size=voxel)
    out = {'n_set': int(len(truth)), 'v_none': kmeans_v(X0, truth), 'v_all': kmeans_v(Xref, truth),
           'cosine_none_to_all': round(float((X0 * Xref).sum(1).mean()), 4), 'sizes': {}}
    rng = np.random.default_rng(100)
    for n in sizes:
        vs, cs = [], []
        for _ in range(repeats):
            idx = np.sort(rng.choice(len(vols), n, replace=False))
            m = adapt.reestimate_bn(copy.deepcopy(model), adapt.VolumeSource.from_arrays(vols[idx], voxel, config),
                                    progress=False)
            X = embed_arrays(vols, Embedder(m, config, 'cpu', 'fp32'), config, voxel_size=voxel)
            vs.append(kmeans_v(X, truth))
            cs.append(float((X * Xref).sum(1).mean()))
        out['sizes'][n] = {'v_mean': round(float(np.mean(vs)), 4), 'v_sd': round(float(np.std(vs)), 4),
                           'cosine_to_all': round(float(np.mean(cs)), 4)}
        print('  min_n n=%d: V %.4f +- %.4f, cosine to all %.4f' % (n, np.mean(vs), np.std(vs), np.mean(cs)), flush=True)
    return out


# ------------------------------------------------------------------ cost
def cost(n, mode, tmp, threads):
    """Adapt ``n`` subtomograms read from files in a child process: seconds, peak RSS."""
    code = r'''
import sys, time, resource, glob, logging, json
sys.path.insert(0, %r)
import torch; torch.set_num_threads(%d)
from deepcluster.core.inference import adapt
from deepcluster.core.model.network import load_model, resolve_model_path
files = sorted(glob.glob(%r))[:%d]
m, c = load_model(resolve_model_path(None))
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
u0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.time()
src = adapt.VolumeSource.from_files(files, [13.68] * len(files), c)
res = adapt.adapt_model(m, c, src, %r, progress=False, guard=True)
u1 = resource.getrusage(resource.RUSAGE_SELF)
import os
print(json.dumps({'seconds': round(time.time() - t, 1), 'rss_before_mb': round(r0 / 1024, 1),
      'cpu_seconds': round(u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime, 1),
      'load_average': [round(x, 1) for x in os.getloadavg()],
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'steps': res.report.get('finetune', {}).get('steps'), 'accepted': res.accepted}))
''' % (REPO, threads, os.path.join(tmp, '*.mrc'), n, mode)
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def make_files(n, tmp):
    """``n`` subtomogram files (30^3 at 13.68 A: noise around a blob) for the cost runs."""
    from deepcluster.core.inference.volumes import write_volume
    os.makedirs(tmp, exist_ok=True)
    have = len(glob.glob(os.path.join(tmp, '*.mrc')))
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:30, :30, :30] - 14.5
    for i in range(have, n):
        r = rng.uniform(3, 8)
        v = (np.exp(-(x ** 2 / r ** 2 + y ** 2 / (r * rng.uniform(0.5, 2)) ** 2 + z ** 2 / r ** 2))
             + rng.normal(0, 0.5, x.shape)).astype(np.float32)
        write_volume(os.path.join(tmp, 'sub_%05d.mrc' % i), -v, 13.68)


def _plain(o):
    return o.item() if hasattr(o, 'item') else o.tolist() if hasattr(o, 'tolist') else str(o)


# ------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--parts', nargs='+', default=['realistic', 'source', 'cost'],
                    help='realistic, physical, source, min_n, cost')
    ap.add_argument('--seeds', type=int, nargs='+', default=list(REPORT_SEEDS))
    ap.add_argument('--kinds', nargs='+', default=list(KINDS))
    ap.add_argument('--modes', nargs='+', default=['none', 'bn', 'full'])
    ap.add_argument('--steps', type=int, default=None, help='steps of full (default: the default)')
    ap.add_argument('--weights', default=None, help='JSON loss weights of full (default: the default)')
    ap.add_argument('--lr', type=float, default=None)
    ap.add_argument('--min-n-sets', nargs='+', default=['paper:100', 'rare:100'],
                    help='validation sets of the min_n part (kind:seed, physical:seed)')
    ap.add_argument('--cost-n', type=int, nargs='+', default=[1000, 10000])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=os.path.join(RESULTS, 'bench_adapt.json'))
    ap.add_argument('--merge', action='store_true', help='add these sets to those already in --out')
    ap.add_argument('--cached-only', action='store_true', help='realistic: only the sets already simulated')
    ap.add_argument('--resummarise', action='store_true',
                    help='only recompute the summaries of --out (the guard at the current margin)')
    a = ap.parse_args(argv)
    if a.resummarise:
        res = json.load(open(a.out))
        for part, d in res['parts'].items():
            if isinstance(d, dict) and 'sets' in d:
                modes = [m for m in ('none', 'bn', 'full') if any(m in row for row in d['sets'].values())]
                d['summary'] = summarise(d['sets'], modes)
                print(part, json.dumps(d['summary'], indent=1))
        with open(a.out + '.tmp', 'w') as f:
            json.dump(res, f, indent=1, default=_plain)
        os.replace(a.out + '.tmp', a.out)
        return
    torch.set_num_threads(a.threads)
    os.environ.setdefault('DEEPCLUSTER_STRUCTURES', os.path.abspath(os.path.join(REPO, '..', 'shared', 'structures')))
    model, config = load_model(resolve_model_path(None))
    variants = {'full': {k: v for k, v in {'steps': a.steps, 'weights': a.weights and json.loads(a.weights)}.items()
                         if v is not None}}
    if a.lr:
        adapt.LR = a.lr
    result = {'model': 'shipped default', 'model_sha256': model_sha256(None), 'torch': torch.__version__,
              'threads': a.threads, 'machine': platform.machine(), 'cpus': os.cpu_count(),
              'defaults': {'mode': adapt.DEFAULT_MODE, 'steps': adapt.DEFAULT_STEPS, 'minutes': adapt.DEFAULT_MINUTES,
                           'weights': adapt.WEIGHTS, 'lr': adapt.LR, 'min_subtomograms': adapt.MIN_SUBTOMOGRAMS},
              'variants': variants, 'parts': {}}
    if os.path.isfile(a.out):
        old = json.load(open(a.out))
        result['parts'] = old.get('parts', {})
    t_all = time.time()
    for part in a.parts:
        print('== %s' % part, flush=True)
        if part == 'realistic':
            sets = {'%s:%d' % (k, s): ((lambda k=k, s=s: realistic_set(k, s)), k) for s in a.seeds for k in a.kinds}
        elif part == 'physical':
            sets = {'physical13.68:%d' % s: ((lambda s=s: physical_set(s)), None) for s in a.seeds}
        elif part == 'source':
            sets = {k: (f, None) for k, f in source_sets().items()}
        if part == 'realistic' and a.cached_only:
            from realistic import sets as rsets
            sets = {k: v for k, v in sets.items()
                    if os.path.exists(rsets.cache_path(k.split(':')[0], int(k.split(':')[1]), 13.68))}
        if part in ('realistic', 'physical', 'source'):
            q = quality(model, config, sets, a.modes, variants)
            if a.merge:
                q = dict(result['parts'].get(part, {}).get('sets', {}), **q)
            result['parts'][part] = {'seeds': sorted({int(k.split(':')[1]) for k in q if ':' in k}) or None,
                                     'sets': q, 'summary': summarise(q, a.modes)}
            print(json.dumps(result['parts'][part]['summary']), flush=True)
        elif part == 'min_n':       # on validation sets only
            rows = {}
            for name in a.min_n_sets:
                kind, seed = name.split(':')
                load = (lambda s=int(seed): physical_set(s)) if kind == 'physical' else \
                       (lambda k=kind, s=int(seed): realistic_set(k, s))
                rows[name] = min_n(model, config, load)
            result['parts']['min_n'] = rows
        elif part == 'cost':
            tmp = '/tmp/bench_adapt_files'
            make_files(max(a.cost_n), tmp)
            rows = {}
            for n in a.cost_n:
                for mode in [m for m in a.modes if m != 'none']:
                    rows['%s:%d' % (mode, n)] = r = cost(n, mode, tmp, a.threads)
                    print('  %s n=%d: %s' % (mode, n, r), flush=True)
                    result['parts']['cost'] = rows          # each row as soon as it is measured
                    with open(a.out + '.tmp', 'w') as f:
                        json.dump(result, f, indent=1, default=_plain)
                    os.replace(a.out + '.tmp', a.out)
            result['parts']['cost'] = rows
        with open(a.out + '.tmp', 'w') as f:
            json.dump(result, f, indent=1, default=_plain)
        os.replace(a.out + '.tmp', a.out)
    result['seconds'] = round(time.time() - t_all, 1)
    with open(a.out + '.tmp', 'w') as f:
        json.dump(result, f, indent=1, default=_plain)
    os.replace(a.out + '.tmp', a.out)
    print('wrote %s' % a.out)


if __name__ == '__main__':
    main()
