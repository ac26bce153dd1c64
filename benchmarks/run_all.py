"""``make bench``: every speed/quality benchmark, each writing its JSON (and PNGs)
to benchmarks/results/ (the shipped accurate model's quality to
results/accurate/). Run on an otherwise idle machine: the ratios inside each
JSON (ours vs a reference) are measured in the same run, the absolute rates are
only as good as the machine's quiet.

The heavier studies stay opt-in: the auto-k criterion comparison
(``bench_cluster.py --parts auto_k``), model-vs-model quality on several test
seeds (``bench_compare.py default accurate OLD.pt``), the ideal
observers that bound what the test data allow (``bench_ceiling.py``, ~15 min),
the encoder comparison (``bench_arch.py``) and the trainings of the capacity
study (``bench_capacity.py``, GPU; its CPU speeds are re-measured here).
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')

PHYSICAL = [
    ('physical6.8', ['bench_physical.py', '--voxel-size', '6.8']),
    ('physical', ['bench_physical.py']),
    ('physical13.68', ['bench_physical.py', '--voxel-size', '13.68']),
    ('physical20', ['bench_physical.py', '--voxel-size', '20']),
    ('physical_context6.8', ['bench_physical.py', '--context', '--contrast', '0.03', '--voxel-size', '6.8']),
    ('physical_context', ['bench_physical.py', '--context', '--contrast', '0.03']),
    ('physical_context13.68', ['bench_physical.py', '--context', '--contrast', '0.03', '--voxel-size', '13.68']),
    ('physical_context20', ['bench_physical.py', '--context', '--contrast', '0.03', '--voxel-size', '20']),
    ('physical_paper_real', ['bench_physical.py', '--paper-real']),
    ('physical_paper_real_mb_random', ['bench_physical.py', '--paper-real', '--mb-side', 'random']),
]
ACCURATE = os.path.join(RESULTS, 'accurate')     # the shipped accurate model's quality results
BENCHES = [
    ('simulate', ['bench_simulate.py']),
    ('stress', ['bench_stress.py']),     # kills at random moments: the output policy holds
    ('embed', ['bench_embed.py', '--parts', 'speed', 'disk', 'gpu']),
    ('cluster', ['bench_cluster.py', '--parts', 'scale', 'auto_k_time']),
    ('scipion_chain', ['bench_scipion_chain.py']),   # simulate -> classify protocols vs the CLI, 10k + 50k
    ('quality', ['bench_quality.py']),
    ('adapt', ['bench_adapt.py']),          # embed --adapt vs none: realistic + source-domain sets, cost
    *PHYSICAL,
    ('realistic', ['bench_realistic.py']),       # independent physical benchmark, default + accurate
    ('accurate_quality', ['bench_quality.py', '--model', 'accurate', '--out',
                          os.path.join(ACCURATE, 'bench_quality.json'), '--plots', os.path.join(ACCURATE, 'quality')]),
    *[('accurate_' + name, cmd + ['--model', 'accurate', '--results', ACCURATE]) for name, cmd in PHYSICAL],
    ('capacity_speed', ['bench_capacity.py', '--speed-only']),
    ('invariance', ['bench_embed.py', '--parts', 'invariance', '--models',
                    os.path.join(REPO, 'deepcluster', 'models', 'default.pt'),
                    os.path.join(REPO, 'deepcluster', 'models', 'accurate.pt')]),
]


def bench_demo():
    """End-to-end demo (headless Scipion project), wall time."""
    t0 = time.time()
    out = os.path.join(RESULTS, 'demo_report')
    subprocess.run([sys.executable, '-m', 'deepcluster', '-q', 'demo', '--out', out], check=True, cwd=REPO)
    res = {'seconds': round(time.time() - t0, 1), 'target_seconds': 300,
           'metrics': json.load(open(os.path.join(out, 'metrics.json'))).get('metrics', {})}
    res['metrics'].pop('contingency', None)
    with open(os.path.join(RESULTS, 'bench_demo.json'), 'w') as f:
        json.dump(res, f, indent=1)
    return res


def main(argv):
    only = set(argv)
    os.makedirs(RESULTS, exist_ok=True)
    failed = []
    for name, cmd in BENCHES:
        if only and name not in only:
            continue
        print('== bench %s: %s' % (name, ' '.join(cmd)), flush=True)
        if subprocess.run([sys.executable] + [os.path.join(HERE, cmd[0])] + cmd[1:], cwd=REPO).returncode:
            failed.append(name)
    if not only or 'demo' in only:
        print('== bench demo', flush=True)
        print(bench_demo())
    if failed:
        sys.exit('benchmarks failed: %s' % ', '.join(failed))


if __name__ == '__main__':
    main(sys.argv[1:])
