"""Default ``fast`` encoder vs the paper's ``deepfinder`` encoder, trained the same
way (same on-the-fly data -- the 13 SHREC classes + negative --, optimiser, seed
and number of samples) and scored the same way (k-means V-measure on a held-out
simulated set, bench_embed.quality). The equal-samples budget is what a CPU can
afford for deepfinder; the speed ratio itself is in bench_embed.json ('speed').

    python benchmarks/bench_arch.py [--steps 400] [--batch-size 32] [--lr 1e-3]
    python benchmarks/bench_arch.py --device cuda --parallel --steps 6000 --batch-size 64 \
        --lr 1e-4 --max-minutes 5 --val-every 400 --name arch_comparison_gpu   # towards convergence

--parallel trains both at once (one GPU holds both); --max-minutes caps each
training's time (then the samples seen differ: both are reported).
Result: the 'arch_comparison' entry of benchmarks/results/bench_embed.json
('arch_comparison_lr1e-04' etc. for another learning rate, e.g. the paper's
1e-4, in case the reference only suffers from ours).
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import bench_embed                                   # noqa: E402
from deepcluster.core.model.network import read_model_file  # noqa: E402
from bench_quality import SHREC, structures_root     # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=400)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--work', default=os.path.join(REPO, 'runs', 'arch'))
    ap.add_argument('--name', default=None, help='result key (default: arch_comparison[_lrLR])')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--max-minutes', type=float, default=None, help='time cap of each training')
    ap.add_argument('--val-every', type=int, default=None, help='validation interval (default: once)')
    ap.add_argument('--parallel', action='store_true', help='train both at the same time')
    a = ap.parse_args(argv)
    maps = [os.path.join(structures_root(), 'maps_10A', s + '.mrc') for s in SHREC]
    models, seconds, runs = [], {}, {}
    for arch in ('fast', 'deepfinder'):
        out = os.path.join(a.work, arch + '.pt')
        cmd = [sys.executable, '-m', 'deepcluster', '-q', 'train', '--structures', *maps, '--arch', arch,
               '--steps', str(a.steps), '--batch-size', str(a.batch_size), '--lr', str(a.lr),
               '--schedule', 'cosine', '--val-per-class', '8' if a.device == 'cpu' else '64',
               '--val-every', str(a.val_every or a.steps), '--checkpoint-every', '0', '--seed', '0',
               '--device', a.device, '--no-plots', '--out', out, '--work-dir', os.path.join(a.work, arch)] \
            + (['--max-minutes', str(a.max_minutes)] if a.max_minutes else [])
        runs[arch] = (subprocess.Popen(cmd, cwd=REPO), time.time())
        if not a.parallel:
            _finish(runs, arch, seconds)
        models.append(out)
    for arch in list(runs):
        _finish(runs, arch, seconds)
    r = bench_embed.quality(models, maps, negative=True, device=a.device)
    cards = {arch: read_model_file(m)[1]['training'] for arch, m in zip(('fast', 'deepfinder'), models)}
    r.update(train_seconds=seconds, steps={k: c['steps'] for k, c in cards.items()}, batch_size=a.batch_size,
             samples={k: c['samples_seen'] for k, c in cards.items()}, lr=a.lr, device=a.device,
             hardware=cards['fast']['hardware'].get('gpu', a.device), parallel=a.parallel,
             max_minutes=a.max_minutes, how='same data, optimiser (Adam, cosine), seed and steps for both '
             '(unless the time cap stopped one first); k-means at k = 14 on 50 held-out subtomograms per class')
    bench_embed.save({a.name or 'arch_comparison' + ('' if a.lr == 1e-3 else '_lr%.0e' % a.lr): r})
    print(r)


def _finish(runs, arch, seconds):
    if arch in runs:
        proc, t = runs.pop(arch)
        if proc.wait():
            raise SystemExit('%s training failed (exit %d)' % (arch, proc.returncode))
        seconds[arch] = round(time.time() - t, 1)
        print('%s trained in %.0f s' % (arch, seconds[arch]), flush=True)


if __name__ == '__main__':
    main()
