"""``python -m deepcluster embed INPUT... --out features.npy``: a thin parser over
``core.inference.embed`` (the preprocessing and the network run there)."""
import logging
import time

from deepcluster.core import DeepClusterError
from deepcluster.core.device import PRECISIONS
from deepcluster.core.inference.embed import CONTRAST_SAMPLE, CONTRASTS, DEFAULT_BATCH, embed_files
from deepcluster.core.checks import check_number
from deepcluster.core.inference.features import claim_features_output, features_csv_path
from deepcluster.core.inference.volumes import VOXEL_RANGE, list_volume_files
from deepcluster.core.model.train import is_model_output
from deepcluster.core.outputs import claim_output, refuse_overlap
from deepcluster.core.inference.adapt import (DEFAULT_MINUTES as ADAPT_MINUTES, DEFAULT_MODE as ADAPT_DEFAULT,
                                              DEFAULT_STEPS as ADAPT_STEPS, MIN_SUBTOMOGRAMS as ADAPT_MIN,
                                              MODES as ADAPT_MODES, adapted_paths)

log = logging.getLogger(__name__)
MAX_THREADS = 1024


def add_parser(subparsers):
    p = subparsers.add_parser(
        'embed', help='compute 32-d shape features of subtomograms',
        description='Compute the 32-d shape feature of each subtomogram with a trained model. '
                    'Each input is resampled to the model voxel size, centre-cropped/padded to the '
                    'model box and normalised like the training data (mixed sizes are allowed).')
    p.add_argument('inputs', nargs='+', metavar='INPUT',
                   help='.mrc files, folders of .mrc files (sorted by name) or .txt files listing paths')
    p.add_argument('--out', required=True, help='features .npy (N x 32, input order); a .csv '
                   'with columns row,file is written beside it')
    p.add_argument('--model', default=None, metavar='MODEL',
                   help='model file from `deepcluster train`, or a shipped model: default (the '
                        'default: fast) or accurate (2.5x slower per subtomogram, better on nearly '
                        'every benchmark; see the README)')
    p.add_argument('--voxel-size', type=float, default=None, metavar='A',
                   help='voxel size of all inputs in Å (default: from each header)')
    p.add_argument('--contrast', choices=CONTRASTS, default='auto',
                   help='protein contrast of the data: dark (raw reconstructions), bright, or auto '
                        '(default: told from the intensity skewness of up to %d files; logged). '
                        'Data whose contrast differs from the model\'s are inverted' % CONTRAST_SAMPLE)
    p.add_argument('--invert-contrast', action='store_true',
                   help='invert the data whatever --contrast says (the model expects the contrast '
                        'in its config: dark protein)')
    p.add_argument('--device', default='auto', help="'auto' (GPU if present), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--batch-size', type=int, default=DEFAULT_BATCH)
    p.add_argument('--precision', choices=PRECISIONS, default='auto',
                   help='arithmetic of the network: auto (default: bf16 on CPUs with bfloat16 '
                        'instructions, AVX512-BF16 or AMX, where it is ~1.6x faster; else fp32), '
                        'fp32 or bf16. bf16 features cluster like fp32 ones (mean cosine 0.99996)'),
    p.add_argument('--threads', type=int, default=0,
                   help='CPU threads for the network (default 0: one per core but one, which '
                        'reads and prepares the next batch meanwhile)')
    p.add_argument('--adapt', choices=ADAPT_MODES, default=ADAPT_DEFAULT,
                   help='adapt the model to these (unlabelled) subtomograms first: none; bn (default: '
                        'BatchNorm statistics re-estimated on the input set, deterministic, ~5 passes '
                        'over the data; best measured mode, see benchmarks/results/bench_adapt.json); '
                        'full (bn, then fine-tuning on these data anchored by the synthetic training '
                        'task, minutes; measured below bn: +0.018 V vs +0.031 on realistic sets, -0.07 '
                        'on simulated ones). The adapted model is written beside --out as '
                        '<stem>_adapted.pt (reuse with --model) with a report <stem>_adapt.json; sets '
                        'under %d subtomograms, or adaptations that leave the features less '
                        'separable, keep the un-adapted model (logged)' % ADAPT_MIN)
    p.add_argument('--adapt-minutes', type=float, default=ADAPT_MINUTES, metavar='M',
                   help='time budget of --adapt full (default %g): fewer steps than planned when '
                        'the machine is too slow (logged)' % ADAPT_MINUTES)
    p.add_argument('--adapt-steps', type=int, default=None, metavar='S',
                   help='fine-tuning steps of --adapt full (default %d)' % ADAPT_STEPS)
    p.add_argument('--adapt-seed', type=int, default=0, help='seed of --adapt full (default 0)')
    p.add_argument('--adapt-force', action='store_true',
                   help='keep the adapted model even when the separability guard would refuse it '
                        '(the guard is a weak judge of small changes: see benchmarks/results/bench_adapt.json)')
    p.set_defaults(func=_run)
    return p


def _is_adapt_report(path):
    """An adaptation report of an earlier embed (a JSON object with its 'mode')."""
    import json
    try:
        with open(path) as f:
            return isinstance(json.load(f).get('mode'), str)
    except (OSError, ValueError, AttributeError):
        return False


def _run(args):
    check_number('--voxel-size', args.voxel_size, *VOXEL_RANGE, none_ok=True)
    check_number('--threads', args.threads, 0, MAX_THREADS, integer=True)   # 1e5 threads segfault torch
    check_number('--batch-size', args.batch_size, 1, 4096, integer=True)
    out = claim_features_output(args.out)          # before the work: refuse early
    outputs = [('--out', out), ('--out (its .csv)', features_csv_path(out))]
    if args.adapt != 'none':                       # the adapted model and its report, beside --out
        model_out, report_out = adapted_paths(out)
        claim_output(model_out, 'embed', '--out (its adapted model)', ours=is_model_output)
        claim_output(report_out, 'embed', '--out (its adaptation report)', ours=_is_adapt_report)
        outputs += [('--out (its adapted model)', model_out), ('--out (its adaptation report)', report_out)]
    files = list_volume_files(args.inputs)
    refuse_overlap(outputs, [('INPUT', p) for p in list(args.inputs) + files] + [('--model', args.model)])
    args.inputs = files
    if not args.adapt_minutes > 0:
        raise DeepClusterError('--adapt-minutes must be positive, got %g' % args.adapt_minutes)
    if args.adapt_steps is not None and args.adapt_steps < 1:
        raise DeepClusterError('--adapt-steps must be at least 1, got %d' % args.adapt_steps)
    adapt = {'mode': args.adapt, 'minutes': args.adapt_minutes, 'steps': args.adapt_steps,
             'seed': args.adapt_seed, 'guard': not args.adapt_force}
    t = time.perf_counter()
    feats = embed_files(args.inputs, model_path=args.model, voxel_size=args.voxel_size,
                        device=args.device, batch_size=args.batch_size,
                        invert_contrast=args.invert_contrast, out=args.out, threads=args.threads,
                        contrast=None if args.invert_contrast else args.contrast,
                        precision=args.precision, adapt=adapt)
    log.info('wrote %s (%d x %d) and %s in %.1f s', args.out, feats.shape[0], feats.shape[1],
             features_csv_path(args.out), time.perf_counter() - t)
