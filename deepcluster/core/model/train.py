"""Training (``python -m deepcluster train``; its flags are in ``deepcluster.cli.train``).

Categorical cross-entropy, Adam, class-balanced batches (paper section 4.2), from
either a labelled folder (``labels.csv`` with columns file,label) or subtomograms
simulated on the fly from structures (fresh data every step, a fixed seeded
validation set).

Time budget (``--max-minutes``): the run stops at that much training time,
validates and writes the model as usual; the cosine schedule then follows
whichever of steps and time runs out first, so a queue's wall-time limit still
ends with an annealed model. Such a run depends on the machine's speed and is
not bit-reproducible.

Reproducibility: the batch of step s (its labels, the files or simulated volumes,
the augmentation) is drawn from a generator seeded by (seed, s) alone. So a run
resumed from a checkpoint (model, optimizer, schedule, accumulators, log) repeats
exactly what the uninterrupted run would have done, and the next batch can be
prepared in the background without touching any shared random state.
"""
import csv
import logging
import math
import os
import platform
import shlex
import time

import numpy as np
import torch
import torch.nn.functional as F

from deepcluster.core import DeepClusterError, fmt_time
from deepcluster.core.device import pick_device
from deepcluster.core.model.network import build_model, default_config, plain, save_model
from deepcluster.core.model.training_data import FolderData, Prefetcher, SimulatedData
from deepcluster.core.outputs import atomic_path

log = logging.getLogger(__name__)
CKPT_FORMAT = 'deepcluster-checkpoint/1'
LOG_COLUMNS = ['step', 'loss', 'acc', 'val_loss', 'val_acc', 'lr', 'time']


# ================================================================ the training
def lr_factor(step, args, time_fraction=0.0):
    """``time_fraction``: share of --max-minutes used (0 without a time budget)."""
    if args.warmup_steps and step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    if args.schedule == 'cosine':
        t = max((step - args.warmup_steps) / max(1, args.steps - args.warmup_steps), time_fraction)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return 1.0


@torch.no_grad()
def evaluate(model, data, batch_size, device, amp_dtype, n_classes):
    model.eval()
    total, correct, loss = 0, 0, 0.0
    conf = torch.zeros((n_classes, n_classes), dtype=torch.long)
    for x, y in data.val_batches(batch_size):
        x, y = x.to(device, non_blocking=True), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(_layout(x, device))
        loss += float(F.cross_entropy(logits.float(), y, reduction='sum'))
        pred = logits.argmax(1)
        correct += int((pred == y).sum())
        total += len(y)
        conf += torch.bincount((y * n_classes + pred).cpu(), minlength=n_classes ** 2).view(n_classes, n_classes)
    model.train()
    if total == 0:
        return float('nan'), float('nan'), conf.numpy()
    return loss / total, correct / total, conf.numpy()


def _layout(x, device):
    x = x.unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last_3d) if device.type == 'cuda' else x


def fingerprint(args):
    """What must match for --resume to continue the same run."""
    keys = ['data', 'structures', 'procedural', 'membrane_bound', 'embedded', 'negative', 'box', 'voxel_size',
            'snr', 'tilt_range', 'arch', 'widths', 'hidden', 'batch_size', 'lr', 'beta1', 'beta2', 'weight_decay',
            'seed', 'val_fraction', 'val_per_class', 'augment', 'label_smoothing', 'clip_grad',
            'schedule', 'warmup_steps', 'sim_chunk', 'invert_contrast', 'data_voxel_size', 'init',
            'bandlimit_probability', 'max_shift', 'scene', 'mb_site']
    return plain({k: getattr(args, k, None) for k in keys})


WORK_NAMES = ('checkpoint.pt', 'train_log.csv', 'training_curves.png', 'confusion.png')


def _is_work_dir(path):
    """A --work-dir from before outputs were stamped: our file names only."""
    try:
        return all(n in WORK_NAMES or '.dc-' in n for n in os.listdir(path))
    except OSError:
        return False


def is_model_output(path):
    """Whether ``path`` is a model file written by ``train`` (so it may be replaced)."""
    from deepcluster.core.model.network import read_model_file
    try:
        read_model_file(path)
    except DeepClusterError:
        return False
    return True


def train(args, on_step=None):
    """Run a training described by parsed CLI ``args``; returns the output path.

    The outputs follow ``core.outputs``: --out replaces only a model file, neither
    it nor --work-dir may overlap an input, and a failed run leaves no work folder it
    created (unless it holds a checkpoint to resume from).
    ``on_step(step)`` is called after each completed step (tests use it to
    simulate an interruption)."""
    from deepcluster.core.outputs import check_out_path, claim_output, refuse_overlap, work_folder
    if not os.fspath(args.out).lower().endswith('.pt'):
        raise DeepClusterError('--out %s: expected a model file name ending in .pt' % args.out)
    out = claim_output(args.out, 'train', '--out', ours=is_model_output)
    work = check_out_path(args.work_dir, '--work-dir') if args.work_dir is not None \
        else os.path.splitext(out)[0] + '_train'
    inputs = [('--data', args.data), ('--init', args.init)] + [('--structures', p) for p in args.structures or ()]
    refuse_overlap([('--out', out), ('--work-dir', work)], inputs)
    with work_folder(work, 'train', legacy=_is_work_dir) as work:
        return _train(args, work, on_step)


def _train(args, work, on_step):
    t_start = time.time()
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    ckpt_path = os.path.join(work, 'checkpoint.pt')
    if args.steps < 1 or args.batch_size < 1:
        raise DeepClusterError('--steps and --batch-size must be at least 1')

    if args.data:
        data = FolderData(args.data, args)
    else:
        data = SimulatedData(args, device)
    names = data.class_names
    cfg = default_config(args.arch, names, box=data.box, voxel_size=data.voxel_size,
                         contrast=getattr(data, 'contrast', 'dark'))
    if args.widths:
        if args.arch != 'fast' or len(args.widths) != 5:
            raise DeepClusterError('--widths: 5 channel counts, for --arch fast only')
        cfg['arch_params']['widths'] = list(args.widths)
    if getattr(args, 'hidden', None) is not None:
        if args.arch != 'fast' or args.hidden < 1:
            raise DeepClusterError('--hidden: a positive width, for --arch fast only')
        cfg['arch_params']['hidden'] = int(args.hidden)
    model = build_model(cfg)
    if args.init:
        args.init_card = _init_from(model, cfg, args.init)
    model = model.to(device)
    if device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last_3d)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2),
                           weight_decay=args.weight_decay)
    budget = 60.0 * args.max_minutes if getattr(args, 'max_minutes', None) else None
    clock = {'elapsed': 0.0, 't0': time.perf_counter()}   # training time, across resumes

    def used():
        return clock['elapsed'] + time.perf_counter() - clock['t0']

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, args, used() / budget if budget else 0.0))
    amp_dtype, scaler = None, None
    if device.type == 'cuda':
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if amp_dtype == torch.float16:
            scaler = torch.amp.GradScaler('cuda')

    start, rows, acc, best, elapsed = 0, [], [0.0, 0, 0], None, 0.0
    if args.resume and os.path.isfile(ckpt_path):
        ck = read_checkpoint(ckpt_path)
        old, new = ck['fingerprint'], fingerprint(args)
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]   # a newer flag
        if diff:                                                # left at its default (None) matches
            raise DeepClusterError('--resume: %s was made with different settings (%s); use the '
                                   'same flags or another --work-dir' % (ckpt_path, ', '.join(diff)))
        try:
            model.load_state_dict(ck['model'])
            opt.load_state_dict(ck['optimizer'])
            sched.load_state_dict(ck['scheduler'])
            if scaler is not None and ck.get('scaler'):
                scaler.load_state_dict(ck['scaler'])
        except Exception as e:
            raise DeepClusterError('--resume: %s does not fit this model (%s); use another --work-dir'
                                   % (ckpt_path, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]))
        start, rows, acc, best, elapsed = ck['step'], ck['rows'], ck['acc'], ck['best'], ck['elapsed']
        log.info('resuming from %s at step %d', ckpt_path, start)
    elif args.resume:
        log.info('--resume: no checkpoint in %s, starting from step 0', work)

    loader = Prefetcher(lambda s: data.batch(s, args.batch_size, args.seed))
    stream = isinstance(data, FolderData) and not data.in_memory
    log_csv = os.path.join(work, 'train_log.csv')
    n_cls = len(names)
    t0, t_last, s_last = time.perf_counter(), time.perf_counter(), start
    clock.update(elapsed=elapsed, t0=t0)
    model.train()
    run_loss = torch.zeros((), device=device)
    run_correct = torch.zeros((), dtype=torch.long, device=device)
    for step in range(start, args.steps):
        x, y = loader.get(step, prefetch_next=stream and step + 1 < args.steps)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(_layout(x, device))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        run_loss += loss.detach() * len(y)   # on the device: no sync per step
        run_correct += (logits.detach().argmax(1) == y).sum()
        acc[2] += len(y)
        done = step + 1
        out_of_time = budget is not None and used() >= budget and done < args.steps
        last_step = done == args.steps or out_of_time
        if done % args.val_every == 0 or last_step:
            acc = _merge(acc, run_loss, run_correct)
            if not math.isfinite(acc[0]):
                raise DeepClusterError('training diverged: the loss is not finite by step %d; lower '
                                       '--lr (%g) or set --clip-grad; no model was written' % (done, args.lr))
            vl, va, conf = evaluate(model, data, args.batch_size * 4, device, amp_dtype, n_cls)
            row = {'step': done, 'loss': acc[0] / acc[2], 'acc': acc[1] / acc[2], 'val_loss': vl,
                   'val_acc': va, 'lr': opt.param_groups[0]['lr'],
                   'time': round(used(), 2)}
            rows.append(row)
            acc = [0.0, 0, 0]
            no_val = math.isnan(va)   # empty validation split: keep the last weights
            if best is None or args.keep == 'last' or no_val or (va, -vl) > (best['val_acc'], -best['val_loss']):
                best = {'step': done, 'val_acc': va, 'val_loss': vl, 'confusion': conf.tolist(),
                        'state': {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            _write_log(log_csv, rows)
        now = time.perf_counter()
        if now - t_last >= args.log_seconds or last_step or done % args.val_every == 0:
            rate = (done - s_last) / max(now - t_last, 1e-9)
            last = rows[-1] if rows else {}
            log.info('step %d/%d  loss %.4f  acc %.3f  val_loss %s  val_acc %s | %.2f steps/s  '
                     '%.0f samples/s | ETA %s', done, args.steps, float(loss.detach()), float(
                         (logits.detach().argmax(1) == y).float().mean()),
                     '%.4f' % last['val_loss'] if last else '-', '%.3f' % last['val_acc'] if last else '-',
                     rate, rate * args.batch_size, fmt_time(min((args.steps - done) / max(rate, 1e-9),
                                                                   budget - used() if budget else math.inf)))
            t_last, s_last = now, done
        if args.checkpoint_every and done % args.checkpoint_every == 0 and not last_step:
            acc = _merge(acc, run_loss, run_correct)
            _save_checkpoint(ckpt_path, model, opt, sched, scaler, done, rows, acc, best, used(), args)
        if on_step is not None:
            on_step(done)
        if out_of_time:
            log.info('--max-minutes %g reached: stopping at step %d of %d', args.max_minutes, done, args.steps)
            break

    total_time = used()
    steps_done = rows[-1]['step'] if rows else start
    if best is not None and args.keep == 'best':
        model.load_state_dict(best['state'])
    cfg['training'] = _card(args, data, device, total_time, t_start, steps_done)
    last = rows[-1] if rows else {}
    cfg['metrics'] = {'val_acc': best['val_acc'] if best else None,
                      'val_loss': best['val_loss'] if best else None,
                      'kept_step': best['step'] if best else steps_done, 'keep': args.keep,
                      'final_val_acc': last.get('val_acc'), 'final_val_loss': last.get('val_loss'),
                      'final_train_loss': last.get('loss'), 'final_train_acc': last.get('acc'),
                      'confusion': best['confusion'] if best else None, 'class_names': names}
    if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
        raise DeepClusterError('training diverged: the weights are not finite; lower --lr (%g) or set '
                               '--clip-grad; no model was written' % args.lr)
    save_model(args.out, model.cpu().to(memory_format=torch.contiguous_format), cfg)
    if args.plots:
        _plots(work, log_csv, best, names)
    if os.path.isfile(ckpt_path) and not args.keep_checkpoint:
        os.remove(ckpt_path)
    log.info('wrote %s (%s, %d classes, val acc %.3f, %s)', args.out, args.arch, n_cls,
             cfg['metrics']['val_acc'] or float('nan'), fmt_time(total_time))
    return args.out


CKPT_KEYS = ('step', 'model', 'optimizer', 'scheduler', 'rows', 'acc', 'best', 'elapsed', 'fingerprint')


def read_checkpoint(path):
    """The checkpoint dict of --resume, or one line saying why it cannot be used."""
    import pickle
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:     # torch's own text is a page long
        raise DeepClusterError('--resume: %s holds Python objects a safe load refuses; not a deepcluster '
                               'checkpoint (remove it or use another --work-dir)' % path)
    except Exception as e:
        raise DeepClusterError('--resume: %s is not a readable checkpoint (%s); remove it or use another '
                               '--work-dir' % (path, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]))
    if not isinstance(ck, dict) or ck.get('format') != CKPT_FORMAT or any(k not in ck for k in CKPT_KEYS) \
            or not isinstance(ck['fingerprint'], dict):
        raise DeepClusterError('--resume: %s is not a deepcluster checkpoint; remove it or use another '
                               '--work-dir' % path)
    return ck


def _init_from(model, cfg, path):
    """Fine-tuning: start from a model file's weights. The architecture must match,
    or at least its convolutions (then only they carry over: a new fully connected
    part learns on a trained encoder); the classification layer is kept only when
    the classes are the same."""
    from deepcluster.core.model.network import read_model_file
    state, init_cfg = read_model_file(path)
    same_arch = (init_cfg.get('arch'), init_cfg.get('arch_params')) == (cfg['arch'], cfg['arch_params'])
    own = model.state_dict()
    encoder = {k: v for k, v in state.items() if k.startswith('encoder.')}
    same_encoder = init_cfg.get('arch') == cfg['arch'] and encoder and all(
        k in own and own[k].shape == v.shape for k, v in encoder.items())
    if not (same_arch or same_encoder):
        raise DeepClusterError('--init %s: architecture %s %s differs from this run\'s %s %s'
                               % (path, init_cfg.get('arch'), init_cfg.get('arch_params'),
                                  cfg['arch'], cfg['arch_params']))
    same_classes = list(init_cfg.get('class_names', [])) == list(cfg['class_names'])
    if not same_arch:           # e.g. another --hidden: only the convolutions carry over
        state, layers, why = encoder, 'convolutions', 'other fully connected layers'
    elif not same_classes:
        state, layers, why = ({k: v for k, v in state.items() if not k.startswith('head.')}, 'all but the head',
                              'new classes, new classification layer')
    else:
        layers, why = 'all', None
    model.load_state_dict(state, strict=False)
    log.info('initialised from %s (%s)', path, layers + (': ' + why if why else ''))
    card = init_cfg.get('training', {})
    return {'path': os.path.basename(path), 'layers': layers,
            **{k: card.get(k) for k in ('command', 'steps', 'batch_size', 'samples_seen', 'seconds',
                                        'hardware', 'optimizer', 'started', 'init')}}


def _merge(acc, run_loss, run_correct):
    """Fold the on-device running sums into the plain [loss sum, correct, count]."""
    out = [acc[0] + float(run_loss), acc[1] + int(run_correct), acc[2]]
    run_loss.zero_()
    run_correct.zero_()
    return out


def _save_checkpoint(path, model, opt, sched, scaler, step, rows, acc, best, elapsed, args):
    ck = {'format': CKPT_FORMAT, 'step': step, 'model': model.state_dict(),
          'optimizer': opt.state_dict(), 'scheduler': sched.state_dict(),
          'scaler': scaler.state_dict() if scaler is not None else None, 'rows': rows,
          'acc': acc, 'best': best, 'elapsed': elapsed, 'fingerprint': fingerprint(args)}
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)


def _write_log(path, rows):
    with atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            w = csv.DictWriter(f, LOG_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: ('' if r.get(k) is None or (isinstance(r.get(k), float) and
                                                           math.isnan(r[k])) else r[k])
                            for k in LOG_COLUMNS})


def _plots(work, log_csv, best, names):
    try:
        from deepcluster.core.analysis import plots
    except ImportError:
        log.warning('plots module not available: no training figures written')
        return
    if os.path.isfile(log_csv):
        plots.plot_training_curves(os.path.join(work, 'training_curves.png'), log_csv)
    if best is not None and best.get('confusion') is not None:
        plots.plot_confusion(os.path.join(work, 'confusion.png'), np.array(best['confusion']), names,
                             title='Validation confusion (step %d)' % best['step'])


def _card(args, data, device, total_time, t_start, steps_done):
    hw = {'device': str(device), 'torch': torch.__version__, 'cpu_count': os.cpu_count(),
          'platform': platform.platform()}
    if device.type == 'cuda':
        hw['gpu'] = torch.cuda.get_device_name(device)
    card = dict(data.card)
    card.update({'command': 'deepcluster train ' + ' '.join(shlex.quote(a) for a in (args.argv or [])),
                 'seed': args.seed, 'steps': steps_done, 'batch_size': args.batch_size,
                 'samples_seen': steps_done * args.batch_size,
                 'optimizer': {'name': 'adam', 'lr': args.lr, 'betas': [args.beta1, args.beta2],
                               'weight_decay': args.weight_decay, 'schedule': args.schedule,
                               'warmup_steps': args.warmup_steps, 'clip_grad': args.clip_grad,
                               'label_smoothing': args.label_smoothing},
                 'class_balanced_batches': True, 'started': time.strftime('%Y-%m-%d %H:%M:%S',
                                                                          time.localtime(t_start)),
                 'seconds': round(total_time, 1), 'hardware': hw,
                 'init': getattr(args, 'init_card', None)})
    if steps_done < args.steps:
        card.update(steps_planned=args.steps, max_minutes=args.max_minutes)
    return card
