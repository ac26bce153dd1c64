"""Does more capacity pay within the CPU speed budget?

Variants of the fast encoder are trained the same way: the shipped model's data
(79 classes, SNR 0.1-20), from scratch, with the same batch, learning rate, step
count and time cap, all at once on one device. They are compared by validation
accuracy on the fixed simulated set. Their CPU embedding speed is measured in one
run, interleaved with the DeepFinder reference: the issue asks the default to stay
at least 50x faster than it.

    python benchmarks/bench_capacity.py --device cuda --max-minutes 4.5   # train all, then speed
    python benchmarks/bench_capacity.py --trained DIR     # reuse DIR/<variant>/model.pt
    python benchmarks/bench_capacity.py --speed-only      # re-measure the CPU speeds, keep the rest

A meaningful training needs a GPU (the stored result: 4.5 minutes on an H100).

Result: benchmarks/results/bench_capacity.json
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import bench_embed                                                     # noqa: E402
from deepcluster.core.inference.embed import Embedder                            # noqa: E402
from deepcluster.core.model.network import build_model, default_config, read_model_file  # noqa: E402
from deepcluster.core.inference.volumes import atomic_path                       # noqa: E402

RESULT = os.path.join(HERE, 'results', 'bench_capacity.json')
# name: (conv widths, fully connected width); 'base' is the previous default architecture
VARIANTS = {'base': ([8, 16, 32, 64, 64], 64), 'h256': ([8, 16, 32, 64, 64], 256),
            'w5_96': ([8, 16, 32, 64, 96], 128), 'w45_96': ([8, 16, 32, 96, 96], 128),
            'w2x': ([16, 32, 64, 128, 128], 128)}


def train_all(work, device, steps, max_minutes, batch_size=256, lr=1e-3):
    """Every variant at once (a GPU holds them all); returns the seconds each took."""
    runs = {}
    for name, (widths, hidden) in VARIANTS.items():
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        cmd = [sys.executable, os.path.join(HERE, 'train_shipped_model.py'), '--device', device,
               '--steps', str(steps), '--max-minutes', str(max_minutes), '--val-every', str(max(1, steps // 10)),
               '--batch-size', str(batch_size), '--lr', str(lr), '--snr', '0.1', '20', '--skip-eval',
               '--widths', *map(str, widths), '--hidden', str(hidden),
               '--out', os.path.join(d, 'model.pt'), '--work-dir', d]
        runs[name] = (subprocess.Popen(cmd, cwd=REPO, stdout=open(os.path.join(work, name + '.log'), 'w'),
                                       stderr=subprocess.STDOUT), time.time())
    seconds = {}
    for name, (proc, t) in runs.items():
        if proc.wait():
            raise SystemExit('%s failed: see %s.log in %s' % (name, name, work))
        seconds[name] = round(time.time() - t, 1)
    return seconds


def trained(work):
    """Validation accuracy and training card of each variant trained under ``work``."""
    out = {}
    for name in VARIANTS:
        cfg = read_model_file(os.path.join(work, name, 'model.pt'))[1]
        assert (cfg['arch_params']['widths'], cfg['arch_params']['hidden']) == VARIANTS[name], name
        card, m = cfg['training'], cfg['metrics']
        with open(os.path.join(work, name, 'train', 'train_log.csv')) as f:
            curve = [(int(r['step']), round(float(r['val_acc']), 4)) for r in csv.DictReader(f)]
        out[name] = {'val_acc': round(m['val_acc'], 4), 'final_val_acc': round(m['final_val_acc'], 4),
                     'steps': card['steps'], 'samples_seen': card['samples_seen'], 'batch_size': card['batch_size'],
                     'train_seconds': card['seconds'], 'hardware': card['hardware'].get('gpu') or card['hardware']['device'],
                     'n_val': card.get('n_val'), 'val_curve': curve, 'command': card['command']}
    return out


def cpu_speed(rounds=4, box=40):
    """Subtomograms/s of each variant and of deepfinder, interleaved in one process,
    all in fp32 (like for like; bench_embed.py measures bf16 too)."""
    names = ['classes'] * 79
    cfgs = {n: default_config('fast', names, box=box, arch_params={'widths': w, 'hidden': h, 'l2_features': True})
            for n, (w, h) in VARIANTS.items()}
    cfgs['deepfinder'] = default_config('deepfinder', names, box=box)
    torch.manual_seed(0)
    models = {n: build_model(c).eval() for n, c in cfgs.items()}
    embs = {n: Embedder(models[n], cfgs[n], device='cpu', precision='fp32') for n in cfgs}
    plan = {n: (32, 1) if n == 'deepfinder' else (128, 3) for n in embs}
    best = {n: max(r) for n, r in bench_embed.interleaved_rates(embs, plan, rounds, box).items()}
    return {n: {'best_per_s': round(best[n], 1), 'x_deepfinder': round(best[n] / best['deepfinder'], 1),
                'params': sum(p.numel() for p in models[n].parameters())} for n in embs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--trained', default=None, help='folder of an earlier training run: skip training')
    ap.add_argument('--work', default=os.path.join(REPO, 'runs', 'capacity'))
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--steps', type=int, default=5000)
    ap.add_argument('--max-minutes', type=float, default=4.5)
    ap.add_argument('--rounds', type=int, default=4)
    ap.add_argument('--speed-only', action='store_true', help='only the CPU speeds, into the existing result')
    a = ap.parse_args(argv)
    if a.speed_only:
        res = json.load(open(RESULT))
        res.update(cpu_speed=cpu_speed(a.rounds), conditions=bench_embed.conditions())
        return _save(res)
    work, seconds = a.trained or a.work, None
    if not a.trained:
        seconds = train_all(work, a.device, a.steps, a.max_minutes)
    res = {'what': 'fast-encoder variants trained the same way (shipped data, SNR 0.1-20, from scratch, '
                   'batch 256, lr 1e-3 cosine, same steps and time cap, all at once on one device); '
                   'validation accuracy on the fixed simulated set; CPU speed in one interleaved run',
           'variants': {n: {'widths': w, 'hidden': h} for n, (w, h) in VARIANTS.items()},
           'training': trained(work), 'wall_seconds': seconds,
           'cpu_speed': cpu_speed(a.rounds), 'conditions': bench_embed.conditions()}
    return _save(res)


def _save(res):
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with atomic_path(RESULT) as tmp:
        with open(tmp, 'w') as f:
            json.dump(res, f, indent=1)
    for n in VARIANTS:
        t, s = res['training'][n], res['cpu_speed'][n]
        print('%-7s val acc %.3f (%d steps)  CPU %6.0f/s = %4.1fx deepfinder' % (
            n, t['val_acc'], t['steps'], s['best_per_s'], s['x_deepfinder']))
    return res


if __name__ == '__main__':
    main()
