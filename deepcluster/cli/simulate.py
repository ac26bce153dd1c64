"""``python -m deepcluster simulate``: structures in, a labelled folder of synthetic
subtomograms out (``core.datamodel.simulated_set``)."""
import argparse
import logging

from deepcluster.core import DeepClusterError
from deepcluster.core.datamodel.simulate import SimulationConfig
from deepcluster.core.datamodel.simulated_set import simulate_to_folder

log = logging.getLogger(__name__)


def add_parser(subparsers):
    p = subparsers.add_parser(
        'simulate', help='make labelled synthetic subtomograms (the data model)',
        description='Simulate labelled cryo-ET subtomograms from structures (.mrc/.map maps, '
                    '.pdb/.cif models) and/or procedural pseudo-molecules: .mrc files + labels.csv '
                    '+ montage.png in --out.')
    p.add_argument('--structures', nargs='+', metavar='PATH', default=[],
                   help='folders/files of .mrc/.map maps and .pdb/.ent/.cif models (class = file stem)')
    p.add_argument('--procedural', type=int, default=0, metavar='N_CLASSES',
                   help='add N procedural pseudo-molecule classes (proc00...)')
    p.add_argument('--n-per-class', type=int, default=100, metavar='N')
    p.add_argument('--box', type=int, default=40, help='box side in voxels (default 40)')
    p.add_argument('--voxel-size', type=float, default=10.0, help='Å/voxel (default 10)')
    p.add_argument('--tilt-range', type=float, nargs=2, default=(-60.0, 60.0), metavar=('MIN', 'MAX'))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', required=True, metavar='DIR', help='output folder (created atomically)')
    p.add_argument('--negative', action=argparse.BooleanOptionalAction, default=True,
                   help="add the 'negative' class (no particle at the centre; default on)")
    p.add_argument('--membrane-bound', nargs='+', default=[], metavar='NAME',
                   help="also simulate NAME_mb: that particle bound to a membrane, touching it with its "
                        "map's -z side")
    p.add_argument('--mb-random-side', type=float, default=0.0, metavar='P',
                   help='share of the NAME_mb particles that touch the membrane on a random side instead '
                        '(default 0)')
    p.add_argument('--embedded', nargs='+', default=[], metavar='NAME',
                   help='these structures are membrane proteins (bilayer through the centre, normal to z)')
    p.add_argument('--snr', type=float, nargs=2, default=None, metavar=('LO', 'HI'),
                   help='SNR range, log-uniform (default %s %s)' % SimulationConfig.snr)
    p.add_argument('--contrast', choices=('dark', 'bright'), default='dark',
                   help='dark: protein darker than background, as raw cryo-ET (default)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--device', default='cpu', help="'cpu' (default), 'cuda', 'cuda:N' or 'auto'")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args):
    from deepcluster.core.datamodel.structures import templates_for
    from deepcluster.core.device import pick_device
    if not 0 <= args.mb_random_side <= 1:
        raise DeepClusterError('--mb-random-side %g: must be within 0 and 1' % args.mb_random_side)
    cfg = SimulationConfig(box=args.box, voxel_size=args.voxel_size, tilt_range=tuple(args.tilt_range),
                           contrast=args.contrast, mb_random_side=args.mb_random_side)
    if args.snr is not None:
        cfg.snr = tuple(args.snr)
    cfg.validate()
    if args.n_per_class < 1:
        raise DeepClusterError('--n-per-class %d: must be at least 1' % args.n_per_class)
    if args.procedural < 0:
        raise DeepClusterError('--procedural %d: must be >= 0' % args.procedural)
    if args.batch_size < 1:
        raise DeepClusterError('--batch-size %d: must be at least 1' % args.batch_size)
    if not args.structures and not args.procedural:
        raise DeepClusterError('no classes: give --structures PATH... and/or --procedural N')
    device = pick_device(args.device)
    templates = templates_for(args.structures, args.procedural, args.voxel_size, args.seed, args.embedded)
    res = simulate_to_folder(args.out, templates, args.n_per_class, cfg, seed=args.seed,
                             negative=args.negative, membrane_bound=args.membrane_bound,
                             device=device, batch_size=args.batch_size)
    log.info('wrote %d subtomograms of %d classes to %s in %.1f s', res['n'], len(res['classes']),
             res['out'], res['seconds'])
