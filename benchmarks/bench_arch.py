"""Default ``fast`` encoder vs the paper's ``deepfinder`` encoder, trained the same
way (same on-the-fly data -- the 13 SHREC classes + negative --, optimiser, seed
and number of samples) and scored the same way (k-means V-measure on a held-out
simulated set, bench_embed.quality). The equal-samples budget is what a CPU can
afford for deepfinder; the speed ratio itself is in bench_embed.json ('speed').

    python benchmarks/bench_arch.py [--steps 400] [--batch-size 32] [--lr 1e-3]
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
from bench_quality import SHREC, structures_root     # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=400)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--work', default=os.path.join(REPO, 'runs', 'arch'))
    ap.add_argument('--name', default=None, help='result key (default: arch_comparison[_lrLR])')
    a = ap.parse_args(argv)
    maps = [os.path.join(structures_root(), 'maps_10A', s + '.mrc') for s in SHREC]
    models, seconds = [], {}
    for arch in ('fast', 'deepfinder'):
        out = os.path.join(a.work, arch + '.pt')
        cmd = [sys.executable, '-m', 'deepcluster', '-q', 'train', '--structures', *maps, '--arch', arch,
               '--steps', str(a.steps), '--batch-size', str(a.batch_size), '--lr', str(a.lr),
               '--schedule', 'cosine', '--val-per-class', '8', '--val-every', str(a.steps),
               '--checkpoint-every', '0', '--seed', '0', '--device', 'cpu', '--no-plots',
               '--out', out, '--work-dir', os.path.join(a.work, arch)]
        t = time.time()
        subprocess.run(cmd, check=True, cwd=REPO)
        seconds[arch] = round(time.time() - t, 1)
        models.append(out)
        print('%s trained in %.0f s' % (arch, seconds[arch]), flush=True)
    r = bench_embed.quality(models, maps, negative=True)
    r.update(train_seconds=seconds, steps=a.steps, batch_size=a.batch_size,
             samples_each=a.steps * a.batch_size, lr=a.lr, how='same data, optimiser (Adam, cosine), '
             'seed and samples for both; k-means at k = 14 on 50 held-out subtomograms per class')
    bench_embed.save({a.name or 'arch_comparison' + ('' if a.lr == 1e-3 else '_lr%.0e' % a.lr): r})
    print(r)


if __name__ == '__main__':
    main()
