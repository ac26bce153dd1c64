"""``python -m deepcluster train``: the flags and their checks; the training loop is
``core.model.train.train``, which takes the parsed arguments."""
import argparse
import sys

from deepcluster.core import DeepClusterError
from deepcluster.core.device import pick_device
from deepcluster.core.model.network import ARCHITECTURES, DEFAULT_ARCH
from deepcluster.cli.simulate import add_scene_arguments, binding_sites
from deepcluster.core.model.train import train
from deepcluster.core.checks import check_number, check_seed
from deepcluster.core.inference.volumes import VOXEL_RANGE

MAX_BOX = 256


def add_parser(subparsers):
    p = subparsers.add_parser(
        'train', help='train the encoder on labelled or simulated subtomograms',
        description='Train the 3D CNN whose 32-d penultimate layer is the shape feature. Data: '
                    'a labelled folder (--data) or subtomograms simulated on the fly from '
                    '--structures / --procedural (fresh data every step).')
    d = p.add_argument_group('data')
    d.add_argument('--data', metavar='FOLDER|labels.csv',
                   help='labelled subtomograms: a folder with labels.csv (columns file,label) or the csv')
    d.add_argument('--structures', nargs='+', metavar='PATH',
                   help='simulate from these maps / PDB / mmCIF files or folders of them (class = file stem)')
    d.add_argument('--procedural', type=int, default=0, metavar='N', help='add N procedural shape classes')
    d.add_argument('--membrane-bound', nargs='+', metavar='NAME', default=[],
                   help='structures simulated sitting on a membrane')
    add_scene_arguments(d)
    d.add_argument('--embedded', nargs='+', metavar='NAME', default=[],
                   help='these structures are membrane proteins (bilayer through the centre)')
    d.add_argument('--negative', action=argparse.BooleanOptionalAction, default=True,
                   help="simulation: add the 'negative' class (no particle at the centre; default on)")
    d.add_argument('--box', type=int, default=None, help='model box in voxels (simulation default 40; '
                   'folder default: the data box)')
    d.add_argument('--voxel-size', type=float, default=None, metavar='A',
                   help='model voxel size in Å (simulation default 10; folder default: the data)')
    d.add_argument('--snr', type=float, nargs=2, metavar=('LO', 'HI'), help='simulated SNR range')
    d.add_argument('--tilt-range', type=float, nargs='+', default=None, metavar='DEG',
                   help='simulated tilt range: DEG for ±DEG, or MIN MAX (default ±60)')
    d.add_argument('--bandlimit-probability', type=float, default=0.5, metavar='P',
                   help='simulation: share of subtomograms band-limited as if acquired at a coarser '
                        'voxel size (10-20 A) and resampled, as real data at other voxel sizes are '
                        '(default %(default)s)')
    d.add_argument('--max-shift', type=float, default=None, metavar='VOXELS',
                   help='simulation: picking error, a uniform offset of up to this many voxels per '
                        'axis (default 1, as template-matching picks); raise it for rougher picks')
    d.add_argument('--sim-chunk', type=int, default=None,
                   help='simulate this many steps of batches at once (default 1 on CPU, 8 on GPU)')
    d.add_argument('--data-voxel-size', type=float, default=None, metavar='A',
                   help='voxel size of the labelled files, overriding their headers')
    d.add_argument('--invert-contrast', action='store_true',
                   help='labelled data has bright protein: invert it (models expect dark protein)')
    d.add_argument('--val-fraction', type=float, default=0.1, help='folder: validation share per class')
    d.add_argument('--val-per-class', type=int, default=64, help='simulation: fixed validation set size per class')
    d.add_argument('--augment', choices=['rot180', 'none'], default='rot180',
                   help='folder: random 180-degree rotations about the box axes (default; '
                        'keeps the hand and the missing-wedge geometry)')
    d.add_argument('--max-memory-gb', type=float, default=2.0,
                   help='folder: load into memory up to this size, else stream from disk')
    m = p.add_argument_group('model and optimisation')
    m.add_argument('--arch', choices=ARCHITECTURES, default=DEFAULT_ARCH,
                   help="'fast' (default, designed for throughput) or 'deepfinder' (the paper's)")
    m.add_argument('--widths', type=int, nargs=5, default=None, metavar='C',
                   help='fast: channels of its 5 convolutions (default 8 16 32 64 128; the shipped '
                        'accurate model: 16 32 64 128 128)')
    m.add_argument('--hidden', type=int, default=None, metavar='N',
                   help='fast: width of the fully connected layer before the feature (default 256)')
    m.add_argument('--init', metavar='MODEL.pt', default=None,
                   help='start from this model\'s weights (fine-tuning; same architecture)')
    m.add_argument('--steps', type=int, default=2000)
    m.add_argument('--batch-size', type=int, default=64)
    m.add_argument('--lr', type=float, default=1e-4)
    m.add_argument('--beta1', type=float, default=0.9)
    m.add_argument('--beta2', type=float, default=0.999)
    m.add_argument('--weight-decay', type=float, default=0.0)
    m.add_argument('--schedule', choices=['constant', 'cosine'], default='constant')
    m.add_argument('--warmup-steps', type=int, default=0)
    m.add_argument('--clip-grad', type=float, default=0.0, help='max gradient norm (0 = off)')
    m.add_argument('--label-smoothing', type=float, default=0.0)
    m.add_argument('--keep', choices=['best', 'last'], default='best',
                   help='write the weights with the best validation accuracy (default) or the last')
    m.add_argument('--seed', type=int, default=0)
    r = p.add_argument_group('run')
    r.add_argument('--out', required=True, help='model file to write (.pt)')
    r.add_argument('--work-dir', default=None, help='checkpoints, log CSV and figures '
                   '(default: <out>_train/)')
    r.add_argument('--resume', action='store_true', help='continue from the checkpoint in --work-dir')
    r.add_argument('--max-minutes', type=float, default=None, metavar='MIN',
                   help='stop after this much training time and write the model (the cosine schedule '
                        'then anneals by time; e.g. a queue\'s wall-time limit)')
    r.add_argument('--val-every', type=int, default=100)
    r.add_argument('--checkpoint-every', type=int, default=200, help='steps between checkpoints (0 = none)')
    r.add_argument('--keep-checkpoint', action='store_true', help='keep the checkpoint after success')
    r.add_argument('--plots', action=argparse.BooleanOptionalAction, default=True,
                   help='write training_curves.png and confusion.png in --work-dir (default on)')
    r.add_argument('--log-seconds', type=float, default=10.0, help='progress line at most this often')
    r.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.set_defaults(func=_run)
    return p


def parse_args(argv):
    """Parsed and checked ``train`` arguments (for the Python API and tests)."""
    ap = argparse.ArgumentParser(prog='deepcluster')
    add_parser(ap.add_subparsers())
    args = ap.parse_args(['train'] + [str(a) for a in argv])
    args.argv = [str(a) for a in argv]
    return finalise_args(args)


def check_train_args(args):
    """Every number in range before anything runs (core.checks): NaN, inf, 0 or a
    huge value get one line naming the flag."""
    c = check_number
    c('--box', args.box, 8, MAX_BOX, integer=True, none_ok=True)
    if args.box is not None and args.box % 4:
        raise DeepClusterError('--box %d: must be divisible by 4' % args.box)
    c('--voxel-size', args.voxel_size, *VOXEL_RANGE, none_ok=True)
    c('--data-voxel-size', args.data_voxel_size, *VOXEL_RANGE, none_ok=True)
    c('--procedural', args.procedural, 0, 1000, integer=True)
    for v in args.snr or ():
        c('--snr', v, 0, 1e6, lo_open=True)
    for v in args.tilt_range or ():
        c('--tilt-range', v, -90, 90)
    c('--bandlimit-probability', args.bandlimit_probability, 0, 1)
    c('--max-shift', args.max_shift, 0, MAX_BOX, none_ok=True)
    c('--sim-chunk', args.sim_chunk, 1, 1024, integer=True, none_ok=True)
    c('--val-fraction', args.val_fraction, 0, 0.99)
    c('--val-per-class', args.val_per_class, 1, 10 ** 5, integer=True)
    c('--max-memory-gb', args.max_memory_gb, 0, 1e6)
    for v in args.widths or ():
        c('--widths', v, 1, 4096, integer=True)
    c('--hidden', args.hidden, 1, 65536, integer=True, none_ok=True)
    c('--steps', args.steps, 1, 10 ** 9, integer=True)
    c('--batch-size', args.batch_size, 1, 4096, integer=True)
    c('--lr', args.lr, 0, 10, lo_open=True)
    c('--beta1', args.beta1, 0, 0.999999)
    c('--beta2', args.beta2, 0, 0.999999)
    c('--weight-decay', args.weight_decay, 0, 10)
    c('--warmup-steps', args.warmup_steps, 0, 10 ** 9, integer=True)
    c('--clip-grad', args.clip_grad, 0, 1e6)
    c('--label-smoothing', args.label_smoothing, 0, 0.99)
    check_seed('--seed', args.seed)
    c('--max-minutes', args.max_minutes, 0, 1e7, lo_open=True, none_ok=True)
    c('--val-every', args.val_every, 1, 10 ** 9, integer=True)
    c('--checkpoint-every', args.checkpoint_every, 0, 10 ** 9, integer=True)
    c('--log-seconds', args.log_seconds, 0, 1e6)


def finalise_args(args):
    args.argv = getattr(args, 'argv', None) or sys.argv[2:]
    if args.data and (args.structures or args.procedural):
        raise DeepClusterError('give either --data or --structures/--procedural, not both')
    if args.data and (args.scene or args.mb_site):
        raise DeepClusterError('--scene and --mb-site describe simulated data: not with --data')
    args.mb_sites = binding_sites(args.membrane_bound, args.mb_site)
    check_train_args(args)
    if not args.data:
        args.box = 40 if args.box is None else args.box         # 0 is refused above, not a default
        args.voxel_size = 10.0 if args.voxel_size is None else args.voxel_size
        if args.max_shift is not None and not 0 <= args.max_shift < args.box / 4:
            raise DeepClusterError('--max-shift %g: must be within 0 and a quarter of the box' % args.max_shift)
    args.device = str(pick_device(args.device))   # warns once if cuda is not there
    if args.sim_chunk is None:
        args.sim_chunk = 8 if args.device.startswith('cuda') else 1
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise DeepClusterError('--max-minutes must be positive')
    if args.val_every < 1:
        raise DeepClusterError('--val-every must be at least 1')
    if args.voxel_size is not None and not args.voxel_size > 0:
        raise DeepClusterError('--voxel-size must be positive')
    if args.tilt_range and len(args.tilt_range) > 2:
        raise DeepClusterError('--tilt-range: give DEG or MIN MAX')
    if not 0 <= args.bandlimit_probability <= 1:
        raise DeepClusterError('--bandlimit-probability must be within 0..1')
    if not 0 <= args.val_fraction < 1:
        raise DeepClusterError('--val-fraction must be in [0, 1)')
    return args


def _run(args):
    train(finalise_args(args))
