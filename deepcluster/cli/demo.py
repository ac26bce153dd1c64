"""``python -m deepcluster demo``: the whole chain as a headless Scipion project
(``deepcluster.demo``; pyworkflow is imported only when it runs)."""
import os

PROJECT = 'deepcluster_demo'


def run_demo(args):
    from deepcluster.demo import run_demo as run
    return run(args)


def add_parser(subparsers):
    p = subparsers.add_parser(
        'demo', help='run the whole chain on built-in data as a headless Scipion project',
        description=__import__('deepcluster.demo').demo.__doc__)
    p.add_argument('--out', default='demo_output', help='report folder (default: %(default)s)')
    p.add_argument('--structures', default=os.environ.get('DEEPCLUSTER_STRUCTURES'),
                   help='folder of .mrc/.pdb structures to simulate from (default: '
                        '$DEEPCLUSTER_STRUCTURES, else 6 procedural pseudo-molecules)')
    p.add_argument('--procedural', type=int, default=6, help='procedural classes if no structures')
    p.add_argument('--n-per-class', type=int, default=40)
    p.add_argument('--seed', type=int, default=2026)
    p.add_argument('--project', default=PROJECT, help='Scipion project name (replaced if present)')
    p.set_defaults(func=run_demo)
