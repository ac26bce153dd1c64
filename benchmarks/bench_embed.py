"""Speed, memory and quality of embedding: the fast default (and the shipped accurate
model's architecture) vs the DeepFinder reference.

    .venv/bin/python benchmarks/bench_embed.py                       # speed + disk/memory (CPU; GPU if present)
    .venv/bin/python benchmarks/bench_embed.py --parts speed         # just the throughput ratio
    .venv/bin/python benchmarks/bench_embed.py --parts quality invariance \\
        --models deepcluster/models/default.pt DF.pt                  # needs trained models

Results are merged into benchmarks/results/bench_embed.json (one key per part, so
running a part again replaces only its own numbers). Parts:
  speed       forward throughput at 40^3 on the CPU of the three architectures
              (untrained weights: speed does not depend on them), interleaved rounds
              in one process, best and median per model and their ratios, in fp32
              and, on hardware with bfloat16, in bf16 (what --precision auto uses
              there); plus the fast model with the full in-memory preprocessing
              (embed_arrays).
  disk        ``deepcluster embed`` end to end from MRC files in a fresh process:
              N (default 20,000) distinct 40^3 files at 10 Å, and 2,000 files at
              13.68 Å (box 30, resampled to 10 Å); throughput and peak RSS (VmHWM)
              for N and for N/10 files (memory must not grow with N). The files
              are freshly written, so they are read from the page cache.
  gpu         the same forward throughput on the GPU, when one is present.
  quality     for each --models file: a test set simulated (fresh seed) from
              --test-structures at the model's geometry, embedded, k-means with k =
              number of classes; V-measure, homogeneity, completeness, ARI.
  invariance  for each --models file: each test structure in 20 random orientations
              (simulator without context, no shift or scale jitter), noise-free and
              noisy; mean pairwise cosine similarity of a particle's features (raw,
              and after centring on the mean feature of all particles) and the ratio
              of within-particle to between-particle mean distance.
Other jobs may share this machine: compare only numbers measured in one run.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from deepcluster.core.device import native_bf16_cpu  # noqa: E402
from deepcluster.core.inference.embed import Embedder, embed_arrays  # noqa: E402
from deepcluster.core.model.network import (build_model, default_config, load_model, read_model_file,  # noqa: E402
                                      shipped_model_path)
from deepcluster.core.inference.volumes import atomic_path, write_volume  # noqa: E402

RESULTS = os.path.join(HERE, 'results', 'bench_embed.json')
SHARED = os.path.join(os.path.dirname(ROOT), 'shared', 'structures', 'maps_10A')
SHREC13 = ['1s3x', '3qm1', '3gl1', '3h84', '2cg9', '3d2f', '1u6g', '3cf3', '1bxn', '1qvr',
           '4cr2', '5mrc', '4v94']
N_CLASSES = 14      # the paper's 13 SHREC classes + negative


def conditions():
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    out = {'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
           'loadavg_1_5_15': [round(x, 2) for x in load] if load else None,
           'torch': torch.__version__, 'numpy': np.__version__, 'platform': platform.platform(),
           'time': time.strftime('%Y-%m-%d %H:%M:%S')}
    if torch.cuda.is_available():
        out['gpu'] = torch.cuda.get_device_name(0)
    return out


def untrained(arch, box=40, seed=0):
    """A network of that architecture ('accurate': the shipped accurate model's)."""
    torch.manual_seed(seed)
    extra = {}
    if arch == 'accurate':
        arch, extra = 'fast', {'arch_params': read_model_file(shipped_model_path('accurate'))[1]['arch_params']}
    cfg = default_config(arch, ['c%02d' % i for i in range(N_CLASSES)], box=box, **extra)
    return build_model(cfg).eval(), cfg


# ------------------------------------------------------------------ speed
def _rate(emb, x, n_batches):
    emb(x[:2])   # warm-up (first call allocates / picks kernels)
    if emb.device.type == 'cuda':
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n_batches):
        emb(x)
    if emb.device.type == 'cuda':
        torch.cuda.synchronize()
    return n_batches * len(x) / (time.perf_counter() - t)


def interleaved_rates(embs, plan, rounds, box):
    """Subtomograms/s of each embedder, ``rounds`` rounds taking turns (so a noisy
    machine hits all alike); ``plan[name]`` = (batch size, batches per round)."""
    g = torch.Generator().manual_seed(0)
    data = {a: torch.randn(plan[a][0], box, box, box, generator=g) for a in plan}
    rates = {a: [] for a in plan}
    for _ in range(rounds):
        for a in plan:
            rates[a].append(_rate(embs[a], data[a], plan[a][1]))
    return rates


def speed(device='cpu', rounds=4, box=40, threads=(None,)):
    """Interleaved rounds of the architectures; subtomograms/s. On the CPU once per
    torch thread count in ``threads`` (None = torch's default, one per core): on a
    shared machine, where other jobs hold cores, one thread can beat two. Each in
    fp32 (the like-for-like ratio) and, where the hardware has bfloat16 (what
    ``--precision auto`` then uses), in bf16 too (keys ``*_bf16``)."""
    plan = ({'fast': (1024, 20), 'accurate': (1024, 10), 'deepfinder': (128, 10)} if device == 'cuda'
            else {'fast': (128, 3), 'accurate': (128, 1), 'deepfinder': (32, 1)})   # (batch size, batches per round)
    bf16 = native_bf16_cpu() if device == 'cpu' else torch.cuda.is_bf16_supported()
    if bf16:
        plan.update({a + '_bf16': plan[a] for a in list(plan)})
    embs = {a: Embedder(*untrained(a.replace('_bf16', ''), box), device=device,
                        precision='bf16' if a.endswith('_bf16') else 'fp32') for a in plan}
    res = {'device': device, 'box': box, 'rounds': rounds, 'batch_size': {a: plan[a][0] for a in plan},
           'weights': 'untrained (speed does not depend on them)', 'inference': 'BatchNorm folded, '
           'channels_last_3d, torch.inference_mode; fp32, and bf16 where the hardware has it (*_bf16)',
           'native_bf16': bool(bf16)}
    default_threads = torch.get_num_threads()
    for th in threads:
        torch.set_num_threads(th or default_threads)
        rates = interleaved_rates(embs, plan, rounds, box)
        r = {}
        for a in plan:
            r[a] = {'best_per_s': round(max(rates[a]), 1), 'median_per_s': round(float(np.median(rates[a])), 1),
                    'all_per_s': [round(x, 1) for x in rates[a]]}

        def ratio(a, b, stat='best_per_s', digits=1):
            return round(r[a][stat] / r[b][stat], digits)
        r['ratio_best'] = ratio('fast', 'deepfinder')
        r['ratio_median'] = ratio('fast', 'deepfinder', 'median_per_s')
        r['accurate_ratio_best'] = ratio('accurate', 'deepfinder')
        if bf16:
            r['bf16_ratio_best'] = ratio('fast_bf16', 'deepfinder_bf16')
            r['fast_bf16_vs_deepfinder_fp32_best'] = ratio('fast_bf16', 'deepfinder')
            r['bf16_speedup_best'] = {a: ratio(a + '_bf16', a, digits=2) for a in ('fast', 'accurate', 'deepfinder')}
        res['threads_%d' % torch.get_num_threads() if device == 'cpu' else 'gpu'] = r
    torch.set_num_threads(default_threads)
    if device == 'cpu':   # with preprocessing (normalise, fit box) from in-memory numpy arrays
        model, cfg = untrained('fast', box)
        vols = list(np.random.default_rng(0).normal(size=(512, box, box, box)).astype(np.float32))
        emb = Embedder(model, cfg, 'cpu')
        best = 0
        for _ in range(3):
            t = time.perf_counter()
            embed_arrays(vols, emb, cfg, batch_size=128)
            best = max(best, len(vols) / (time.perf_counter() - t))
        res['fast_with_preprocessing_per_s_default_threads'] = round(best, 1)
        res['fast_with_preprocessing_precision'] = str(emb.dtype).replace('torch.', '')
    return res


# ------------------------------------------------------------------- disk
_CHILD = r'''
import json, sys, time
sys.path.insert(0, %(root)r)
from deepcluster.core.inference.embed import embed_files
t = time.perf_counter()
f = embed_files([%(lst)r], %(model)r, device='cpu', batch_size=%(bs)d, out=%(out)r, progress=False, threads=0, contrast='auto')
dt = time.perf_counter() - t
hwm = [int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
import torch
from deepcluster.core.device import pick_dtype
print(json.dumps({'n': len(f), 'seconds': round(dt, 2), 'per_s': round(len(f) / dt, 1), 'peak_rss_mb': round(hwm, 1),
                  'precision': str(pick_dtype('auto', torch.device('cpu'))).replace('torch.', '')}))
'''


def _embed_child(lst, model, out, bs=64):
    code = _CHILD % {'root': ROOT, 'lst': lst, 'model': model, 'out': out, 'bs': bs}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def disk(n=20000, workdir=None):
    from deepcluster.core.model.network import save_model
    tmp = tempfile.mkdtemp(prefix='bench_embed_', dir=workdir)
    model, cfg = untrained('fast')
    mp = os.path.join(tmp, 'fast.pt')
    save_model(mp, model, cfg)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 40, 40, 40)).astype(np.float32)
    t = time.perf_counter()
    files = []
    for i in range(n):
        p = os.path.join(tmp, 'd10', 's%06d.mrc' % i)
        if i == 0:
            os.makedirs(os.path.dirname(p))
        write_volume(p, base[i % 64] + 0.01 * i, 10.0)
        files.append(p)
    write_s = time.perf_counter() - t
    res = {'files_written_s': round(write_s, 1), 'file_mb_each': round(os.path.getsize(files[0]) / 2 ** 20, 3)}
    for m in (n // 10, n):
        lst = os.path.join(tmp, 'list%d.txt' % m)
        with open(lst, 'w') as f:
            f.write('\n'.join(files[:m]) + '\n')
        res['n%d_at_10A' % m] = _embed_child(lst, mp, os.path.join(tmp, 'f%d.npy' % m))
    m = min(2000, n)
    small = rng.normal(size=(16, 30, 30, 30)).astype(np.float32)
    f137 = []
    for i in range(m):
        p = os.path.join(tmp, 'd13', 's%06d.mrc' % i)
        if i == 0:
            os.makedirs(os.path.dirname(p))
        write_volume(p, small[i % 16], 13.68)
        f137.append(p)
    lst = os.path.join(tmp, 'list137.txt')
    with open(lst, 'w') as f:
        f.write('\n'.join(f137) + '\n')
    res['n%d_at_13.68A_box30_resampled' % m] = _embed_child(lst, mp, os.path.join(tmp, 'f137.npy'))
    res['note'] = ('fresh process per run; %d distinct 40^3 float32 MRC files (written just before, so '
                   'read from the page cache, not a cold disk); peak RSS = VmHWM of that process; '
                   'untrained fast model, batch 64, CPU, torch threads = cores - 1 (the CLI default; '
                   'the reader thread uses the other core)' % n)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return res


# ---------------------------------------------------------------- quality
def _structures(paths):
    if paths:
        return paths
    return [os.path.join(SHARED, s + '.mrc') for s in SHREC13]


def _simulator(paths, cfg, device, negative=False, **overrides):
    from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator
    from deepcluster.core.datamodel.structures import load_structures
    templates = load_structures(paths, cfg['voxel_size'])
    sc = SimulationConfig(box=cfg['box'], voxel_size=cfg['voxel_size'], **overrides)
    return Simulator(templates, sc, device=device, negative=negative)


def _simulate(sim, labels, seed, device, clean=False):
    g = torch.Generator(device=device).manual_seed(seed)
    out, out_clean = [], []
    for a in range(0, len(labels), 128):
        lab = torch.as_tensor(labels[a:a + 128], device=device)
        if clean:
            v, c = sim.batch(lab, g, return_clean=True)
            out.append(v.float().cpu())
            out_clean.append(c.float().cpu())
        else:
            out.append(sim.batch(lab, g).float().cpu())
    return (torch.cat(out), torch.cat(out_clean)) if clean else torch.cat(out)


def quality(models, structures=None, n_per_class=50, seed=12345, snr=None, device='cpu', negative=False):
    from deepcluster.core.analysis import cluster
    from deepcluster.core.analysis import evaluation
    paths = _structures(structures)
    res = {'structures': [os.path.basename(p) for p in paths], 'n_per_class': n_per_class,
           'seed': seed, 'negative': negative, 'snr': snr}
    for mp in models:
        model, cfg = load_model(mp)
        sim = _simulator(paths, cfg, device, negative, **({'snr': tuple(snr)} if snr else {}))
        k = len(sim.class_names)
        labels = np.repeat(np.arange(k), n_per_class)
        vols = _simulate(sim, labels, seed, device).numpy()
        emb = Embedder(model, cfg, device)
        t = time.perf_counter()
        X = embed_arrays(vols, emb, cfg, batch_size=128)
        dt = time.perf_counter() - t
        truth = np.array(sim.class_names)[labels]
        pred, _, _ = cluster.cluster_features(X, k, seed=0, scores=False)
        ev = evaluation.evaluate(truth, pred)
        r = {'arch': cfg['arch'], 'k': k, 'n': len(X), 'l2_features': emb.model.l2_features,
             **{m: round(ev[m], 4) for m in ('v_measure', 'homogeneity', 'completeness', 'ari')},
             'embed_per_s': round(len(X) / dt, 1), 'trained_val_acc': cfg.get('metrics', {}).get('val_acc')}
        emb.model.l2_features = not emb.model.l2_features      # the other feature convention
        X2 = embed_arrays(vols, emb, cfg, batch_size=128)
        ev2 = evaluation.evaluate(truth, cluster.cluster_features(X2, k, seed=0, scores=False)[0])
        r['v_measure_l2_features_%s' % ('on' if emb.model.l2_features else 'off')] = round(ev2['v_measure'], 4)
        res[os.path.basename(mp)] = r
    return res


def _pairwise_cos(F):
    Fn = F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
    S = Fn @ Fn.T
    n = len(F)
    return float((S.sum() - np.trace(S)) / (n * (n - 1)))


def invariance(models, structures=None, n_orient=20, seed=777, snr=(0.5, 0.5), device='cpu'):
    paths = _structures(structures)
    quiet = dict(crowding_probability=0.0, membrane_probability=0.0, bead_probability=0.0,
                 max_shift=0.0, voxel_jitter=0.0, ice_amplitude=(0.0, 0.0), snr=tuple(snr))
    res = {'structures': [os.path.basename(p) for p in paths], 'orientations': n_orient,
           'snr_noisy': list(snr), 'seed': seed,
           'how': 'simulator without context/shift/scale jitter; noise-free = its clean output '
                  '(CTF, missing wedge), normalised; noisy = its output at the SNR given'}
    for mp in models:
        model, cfg = load_model(mp)
        sim = _simulator(paths, cfg, device, False, **quiet)
        k = len(sim.class_names)
        labels = np.repeat(np.arange(k), n_orient)
        noisy, clean = _simulate(sim, labels, seed, device, clean=True)
        emb = Embedder(model, cfg, device)
        r = {'arch': cfg['arch']}
        for name, vols in (('noise_free', clean.numpy()), ('noisy', noisy.numpy())):
            X = embed_arrays(vols, emb, cfg, batch_size=128)
            Xc = X - X.mean(0)
            within = [_pairwise_cos(X[labels == c]) for c in range(k)]
            within_c = [_pairwise_cos(Xc[labels == c]) for c in range(k)]
            D = np.linalg.norm(X[:, None] - X[None], axis=2)
            same = labels[:, None] == labels[None]
            off = ~np.eye(len(X), dtype=bool)
            r[name] = {'mean_cosine': round(float(np.mean(within)), 4),
                       'mean_cosine_centred': round(float(np.mean(within_c)), 4),
                       'per_structure_cosine': {os.path.basename(p)[:-4]: round(w, 4)
                                                for p, w in zip(paths, within)},
                       'within_over_between_distance': round(float(D[same & off].mean() / D[~same].mean()), 4)}
        res[os.path.basename(mp)] = r
    return res


# ------------------------------------------------------------------- main
def save(part_results, path=RESULTS):
    data = {}
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
    data.update(part_results)
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=1)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--parts', nargs='+', default=['speed', 'disk', 'gpu'],
                    choices=['speed', 'disk', 'gpu', 'quality', 'invariance'])
    ap.add_argument('--n', type=int, default=20000, help='files for the disk part')
    ap.add_argument('--rounds', type=int, default=8)
    ap.add_argument('--models', nargs='+', default=[], help='trained model files (quality, invariance)')
    ap.add_argument('--test-structures', nargs='+', default=None,
                    help='maps for quality/invariance (default: the 13 SHREC maps in ../shared)')
    ap.add_argument('--n-per-class', type=int, default=50)
    ap.add_argument('--snr', type=float, nargs=2, default=None, help='quality: test SNR range')
    ap.add_argument('--negative', action='store_true', help='quality: include the negative class')
    ap.add_argument('--device', default='cpu', help='device for quality/invariance')
    ap.add_argument('--out', default=RESULTS)
    args = ap.parse_args(argv)
    out = {}
    for part in args.parts:
        t = time.perf_counter()
        cond = conditions()
        if part == 'speed':
            r = speed('cpu', args.rounds, threads=(None, 1))
        elif part == 'disk':
            r = disk(args.n)
        elif part == 'gpu':
            if not torch.cuda.is_available():
                print('gpu: no CUDA GPU here, skipped')
                continue
            r = speed('cuda', args.rounds)
        elif part in ('quality', 'invariance'):
            if not args.models:
                ap.error('--parts %s needs --models' % part)
            r = (quality(args.models, args.test_structures, args.n_per_class, snr=args.snr,
                         device=args.device, negative=args.negative) if part == 'quality'
                 else invariance(args.models, args.test_structures, device=args.device))
        r['conditions_before'] = cond
        r['loadavg_after'] = [round(x, 2) for x in os.getloadavg()]
        r['seconds'] = round(time.perf_counter() - t, 1)
        out[part] = r
        print(part, json.dumps(r, indent=1))
        save({part: r}, args.out)
    print('wrote', args.out)


if __name__ == '__main__':
    main()
