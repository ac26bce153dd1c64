"""``python -m deepcluster simulate``: structures in, a labelled folder of synthetic
subtomograms out (``core.datamodel.simulated_set``)."""
import argparse
import logging

from deepcluster.core import DeepClusterError
from deepcluster.core.datamodel.simulate import SCENES, SimulationConfig
from deepcluster.core.datamodel.simulated_set import is_simulated_folder, simulate_to_folder
from deepcluster.core.checks import check_number, check_seed
from deepcluster.core.inference.volumes import VOXEL_RANGE
from deepcluster.core.outputs import check_out_path, claim_output, refuse_overlap

MAX_BOX = 256      # voxels: a batch of 256^3 boxes is already gigabytes

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
                   help="also simulate NAME_mb: that particle bound to a membrane at its binding site "
                        "(the map's -z side unless --mb-site names another)")
    add_scene_arguments(p)
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
    p.add_argument('--tomograms', type=int, nargs=2, default=None, metavar=('PER_TOMOGRAM', 'BINNING'),
                   help='also place the particles in synthetic tomograms (tomograms/*.mrc, PER_TOMOGRAM '
                        'particles each, binned BINNING x) and write their coordinates to particles.csv, '
                        'as an extraction would have them')
    p.add_argument('--device', default='cpu', help="'cpu' (default), 'cuda', 'cuda:N' or 'auto'")
    p.set_defaults(func=run_cli)
    return p


def add_scene_arguments(p):
    """--scene and --mb-site, shared by simulate and train."""
    p.add_argument('--scene', choices=sorted(SCENES), default=None,
                   help='classic (default): the data model as the shipped models were first trained; '
                        'cellular: crowded cytosol around every class and the negatives, unrelated '
                        'membranes near 60%% of them, NAME_mb particles 3-5 nm off their membrane at a '
                        'binding site spread by 25 degrees')
    p.add_argument('--mb-site', nargs='+', default=None, metavar='NAME=SITE',
                   help="where NAME_mb meets its membrane: x,y,z (a direction from the complex's "
                        "centre in the map's axes, as a map viewer shows them) or lobes (from the "
                        "smaller lobe through the larger: for a ribosome, small subunit -> large "
                        "subunit -> polypeptide exit tunnel); default: the map's -z side")


def binding_sites(names, site_args):
    """{name: site} for the Simulator from --membrane-bound and --mb-site NAME=SITE."""
    sites = {nm: None for nm in names or ()}
    for item in site_args or ():
        nm, sep, site = item.partition('=')
        if not sep or nm not in sites:
            raise DeepClusterError('--mb-site %s: expected NAME=SITE with NAME one of --membrane-bound (%s)'
                                   % (item, ', '.join(sites) or 'none given'))
        if site != 'lobes':
            try:
                site = tuple(float(v) for v in site.split(','))
            except ValueError:
                site = ()
            if len(site) != 3:
                raise DeepClusterError('--mb-site %s: SITE is lobes or three numbers x,y,z' % item)
        sites[nm] = site
    return sites


def check_simulate_args(args):
    """Every number in range before anything runs (core.checks)."""
    check_number('--box', args.box, 16, MAX_BOX, integer=True)
    check_number('--voxel-size', args.voxel_size, *VOXEL_RANGE)
    # --tilt-range: SimulationConfig.validate (NaN fails its -90 <= min < max <= 90)
    if args.snr is not None:
        for v in args.snr:
            check_number('--snr', v, 0, 1e6, lo_open=True)
    check_number('--mb-random-side', args.mb_random_side, 0, 1)
    check_number('--n-per-class', args.n_per_class, 1, 10 ** 6, integer=True)
    check_number('--procedural', args.procedural, 0, 1000, integer=True)
    check_number('--batch-size', args.batch_size, 1, 4096, integer=True)
    check_seed('--seed', args.seed)
    for v in args.tomograms or ():
        check_number('--tomograms', v, 1, 10 ** 5, integer=True)


def run_cli(args):
    from deepcluster.core.datamodel.structures import templates_for
    from deepcluster.core.device import pick_device
    check_simulate_args(args)
    refuse_overlap([('--out', check_out_path(args.out))], [('--structures', s) for s in args.structures])
    claim_output(args.out, 'simulate', ours=is_simulated_folder, folder=True)
    cfg = SimulationConfig.for_scene(args.scene or 'classic', box=args.box, voxel_size=args.voxel_size,
                                     tilt_range=tuple(args.tilt_range), contrast=args.contrast,
                                     mb_random_side=args.mb_random_side)
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
                             negative=args.negative,
                             membrane_bound=binding_sites(args.membrane_bound, args.mb_site),
                             device=device, batch_size=args.batch_size, tomograms=args.tomograms)
    log.info('wrote %d subtomograms of %d classes to %s in %.1f s', res['n'], len(res['classes']),
             res['out'], res['seconds'])
