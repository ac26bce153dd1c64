"""Training: ``python -m deepcluster train`` (see ``add_parser`` for the flags).

Categorical cross-entropy, Adam, class-balanced batches (paper section 4.2), from
either a labelled folder (``labels.csv`` with columns file,label) or subtomograms
simulated on the fly from structures (fresh data every step, a fixed seeded
validation set).

Reproducibility: the batch of step s (its labels, the files or simulated volumes,
the augmentation) is drawn from a generator seeded by (seed, s) alone. So a run
resumed from a checkpoint (model, optimizer, schedule, accumulators, log) repeats
exactly what the uninterrupted run would have done, and the next batch can be
prepared in the background without touching any shared random state.
"""
import argparse
import csv
import logging
import math
import os
import platform
import shlex
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import DeepClusterError
from .device import pick_device
from .embed import _fmt_time, prepare_batch, scan_headers
from .network import ARCHITECTURES, DEFAULT_ARCH, build_model, default_config, plain, save_model
from .volumes import atomic_path, read_labels, read_volume

log = logging.getLogger(__name__)
CKPT_FORMAT = 'deepcluster-checkpoint/1'
LOG_COLUMNS = ['step', 'loss', 'acc', 'val_loss', 'val_acc', 'lr', 'time']


def step_generator(seed, step, device='cpu'):
    """The generator that draws everything random about batch ``step``."""
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))


def balanced_labels(batch, n_classes, gen):
    """Labels with every class floor/ceil(batch / n_classes) times, shuffled."""
    reps = -(-batch // n_classes)
    lab = torch.cat([torch.randperm(n_classes, generator=gen) for _ in range(reps)])[:batch]
    return lab[torch.randperm(batch, generator=gen)]


def random_rot180(x, gen):
    """Rotate each volume of (B, D, D, D) by one of the four 180-degree rotations
    about the box axes (identity included). Proper rotations keep the hand of a
    chiral particle, and each maps the missing wedge (beam z, tilt axis y) onto
    itself, so the augmented data is still physically plausible."""
    k = torch.randint(4, (x.shape[0],), generator=gen)
    for i, dims in ((1, (2, 3)), (2, (1, 3)), (3, (1, 2))):
        m = k == i
        if m.any():
            x[m] = x[m].flip(dims)
    return x


# ================================================================= data sources
class FolderData:
    """Labelled subtomograms from a labels.csv; in memory if small, else streamed."""

    def __init__(self, path, args):
        csv_path = os.path.join(path, 'labels.csv') if os.path.isdir(path) else path
        rows = read_labels(csv_path)
        base = os.path.dirname(os.path.abspath(csv_path))
        files = [f if os.path.isabs(f) else os.path.join(base, f) for f in rows]
        for f in files:
            if not os.path.isfile(f):
                raise DeepClusterError('%s: lists %s, which does not exist' % (csv_path, f))
        labels = list(rows.values())
        self.class_names = sorted(set(labels))
        if len(self.class_names) < 2:
            raise DeepClusterError('%s: needs at least 2 classes, found %s' % (csv_path, self.class_names))
        y = np.array([self.class_names.index(v) for v in labels])
        self.sizes, shapes = scan_headers(files, args.data_voxel_size)
        self.voxel_size = args.voxel_size or float(np.median(self.sizes))
        sides = [round(max(s) * v / self.voxel_size) for s, v in zip(shapes, self.sizes)]
        self.box = args.box or int(np.bincount(sides).argmax())
        self.invert = args.invert_contrast
        self.files = files
        # stratified validation split, seeded
        rng = np.random.default_rng(args.seed)
        tr, va = [], []
        for c in range(len(self.class_names)):
            idx = rng.permutation(np.flatnonzero(y == c))
            nv = int(round(len(idx) * args.val_fraction)) if len(idx) > 1 else 0
            nv = min(max(nv, 1 if args.val_fraction > 0 and len(idx) > 1 else 0), len(idx) - 1)
            va += list(idx[:nv])
            tr += list(idx[nv:])
        self.train_idx, self.val_idx = np.sort(tr), np.sort(va)
        self.y = torch.from_numpy(y)
        self.members = [torch.from_numpy(self.train_idx[y[self.train_idx] == c])
                        for c in range(len(self.class_names))]
        need = len(files) * self.box ** 3 * 4
        self.in_memory = need <= args.max_memory_gb * 2 ** 30
        self.data = self._load(np.arange(len(files))) if self.in_memory else None
        self.augment = args.augment
        self.card = {'source': 'labelled folder', 'labels_csv': os.path.abspath(csv_path),
                     'n_files': len(files), 'n_train': len(tr), 'n_val': len(va),
                     'per_class': {c: int((y == i).sum()) for i, c in enumerate(self.class_names)},
                     'data_voxel_sizes': sorted(set(round(v, 4) for v in self.sizes)),
                     'in_memory': self.in_memory, 'augment': args.augment,
                     'invert_contrast': bool(self.invert)}
        log.info('labelled data %s: %d files, %d classes (%s), %d train / %d validation, '
                 'box %d at %g A/voxel, %s', csv_path, len(files), len(self.class_names),
                 ', '.join('%s %d' % kv for kv in self.card['per_class'].items()), len(tr), len(va),
                 self.box, self.voxel_size, 'in memory' if self.in_memory else 'streamed from disk')

    def _load(self, idx):
        cfg = {'box': self.box, 'voxel_size': self.voxel_size}
        out = torch.empty((len(idx), self.box, self.box, self.box))
        for a in range(0, len(idx), 256):
            part = idx[a:a + 256]
            vols = [read_volume(self.files[i])[0] for i in part]
            out[a:a + len(part)] = prepare_batch(vols, [self.sizes[i] for i in part], cfg, self.invert)
        return out

    def batch(self, step, batch_size, seed):
        g = step_generator(seed, step)
        lab = balanced_labels(batch_size, len(self.class_names), g)
        pick = torch.stack([self.members[c][torch.randint(len(self.members[c]), (1,), generator=g)][0]
                            for c in lab.tolist()])
        x = self.data[pick].clone() if self.in_memory else self._load(pick.numpy())
        if self.augment == 'rot180':
            x = random_rot180(x, g)
        return x, self.y[pick]

    def val_batches(self, batch_size):
        for a in range(0, len(self.val_idx), batch_size):
            part = self.val_idx[a:a + batch_size]
            x = self.data[torch.from_numpy(part)] if self.in_memory else self._load(part)
            yield x, self.y[torch.from_numpy(part)]


class SimulatedData:
    """Fresh simulated subtomograms every step; a fixed validation set made once."""

    def __init__(self, args, device):
        if not args.structures and not args.procedural:
            raise DeepClusterError('no training data: give --data FOLDER, or --structures and/or '
                                   '--procedural N')
        from .simulate import SimulationConfig, Simulator
        from .structures import templates_for
        import dataclasses
        templates = templates_for(args.structures, args.procedural, args.voxel_size, args.seed,
                                  args.embedded)
        if not templates:
            raise DeepClusterError('no training data: give --data FOLDER, or --structures and/or '
                                   '--procedural N')
        want = {'box': args.box, 'voxel_size': args.voxel_size}
        if args.snr:
            want['snr'] = tuple(args.snr)
        if args.tilt_range:
            t = args.tilt_range
            want['tilt_range'] = (-abs(t[0]), abs(t[0])) if len(t) == 1 else tuple(t)
        fields = {f.name for f in dataclasses.fields(SimulationConfig)}
        unknown = set(want) - fields
        if unknown:
            raise DeepClusterError('the simulator does not support %s' % ', '.join(sorted(unknown)))
        self.sim_config = SimulationConfig(**want)
        self.sim = Simulator(templates, self.sim_config, device=device, negative=args.negative,
                             membrane_bound=tuple(args.membrane_bound or ()))
        self.class_names = list(self.sim.class_names)
        self.contrast = self.sim_config.contrast
        self.device = device
        self.box, self.voxel_size = args.box, args.voxel_size
        self.chunk = max(1, args.sim_chunk)
        self._cached = (None, None)
        # fixed validation set (its own seed, never touches the training stream)
        n = args.val_per_class * len(self.class_names)
        lab = torch.arange(len(self.class_names)).repeat_interleave(args.val_per_class)
        g = torch.Generator(device=device).manual_seed(args.seed + 7919)
        parts = [self.sim.batch(lab[a:a + 256].to(device), g) for a in range(0, n, 256)]
        self.val = (torch.cat(parts).float(), lab.to(device))
        self.card = {'source': 'simulated on the fly', 'structures': [os.path.abspath(p) for p in
                                                                     (args.structures or [])],
                     'procedural': args.procedural, 'membrane_bound': list(args.membrane_bound or ()),
                     'embedded': list(args.embedded or ()),
                     'templates': {t.name: t.source for t in templates},
                     'negative_class': bool(args.negative),
                     'simulation': plain(dataclasses.asdict(self.sim_config)),
                     'n_val': int(n), 'val_seed': args.seed + 7919}
        log.info('simulating %d classes (%s) at box %d, %g A/voxel on %s; validation set %d',
                 len(self.class_names), ', '.join(self.class_names), self.box, self.voxel_size,
                 device, n)

    def batch(self, step, batch_size, seed):
        c = step // self.chunk
        if self._cached[0] != c:
            g = step_generator(seed, c)
            lab = torch.cat([balanced_labels(batch_size, len(self.class_names), g)
                             for _ in range(self.chunk)]).to(self.device)
            gd = step_generator(seed, c, self.device)
            self._cached = (c, (self.sim.batch(lab, gd).float(), lab))
        x, lab = self._cached[1]
        a = (step % self.chunk) * batch_size
        return x[a:a + batch_size], lab[a:a + batch_size]

    def val_batches(self, batch_size):
        x, y = self.val
        for a in range(0, len(y), batch_size):
            yield x[a:a + batch_size], y[a:a + batch_size]


class Prefetcher:
    """Prepare batch s+1 in a thread while step s trains (batches depend on s only)."""

    def __init__(self, fn):
        self.fn, self.next, self.thread, self.result = fn, None, None, None

    def _work(self, s):
        try:
            self.result = (s, self.fn(s), None)
        except BaseException as e:
            self.result = (s, None, e)

    def get(self, s, prefetch_next=True):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.result is not None and self.result[0] == s:
            _, out, err = self.result
            if err is not None:
                raise err
        else:
            out = self.fn(s)
        self.result = None
        if prefetch_next:
            self.thread = threading.Thread(target=self._work, args=(s + 1,), daemon=True)
            self.thread.start()
        return out


# ================================================================ the training
def lr_factor(step, args):
    if args.warmup_steps and step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    if args.schedule == 'cosine':
        t = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
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
            'snr', 'tilt_range', 'arch', 'widths', 'batch_size', 'lr', 'beta1', 'beta2', 'weight_decay',
            'seed', 'val_fraction', 'val_per_class', 'augment', 'label_smoothing', 'clip_grad',
            'schedule', 'warmup_steps', 'sim_chunk', 'invert_contrast', 'data_voxel_size', 'init']
    return plain({k: getattr(args, k, None) for k in keys})


def train(args, on_step=None):
    """Run a training described by parsed CLI ``args``; returns the output path.

    ``on_step(step)`` is called after each completed step (tests use it to
    simulate an interruption)."""
    t_start = time.time()
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    work = args.work_dir or os.path.splitext(os.path.abspath(args.out))[0] + '_train'
    os.makedirs(work, exist_ok=True)
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
    model = build_model(cfg)
    if args.init:
        args.init_card = _init_from(model, cfg, args.init)
    model = model.to(device)
    if device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last_3d)
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2),
                           weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args))
    amp_dtype, scaler = None, None
    if device.type == 'cuda':
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if amp_dtype == torch.float16:
            scaler = torch.amp.GradScaler('cuda')

    start, rows, acc, best, elapsed = 0, [], [0.0, 0, 0], None, 0.0
    if args.resume and os.path.isfile(ckpt_path):
        ck = torch.load(ckpt_path, map_location='cpu', weights_only=True)
        if ck.get('format') != CKPT_FORMAT:
            raise DeepClusterError('%s: not a deepcluster checkpoint' % ckpt_path)
        if ck['fingerprint'] != fingerprint(args):
            diff = [k for k in ck['fingerprint'] if ck['fingerprint'][k] != fingerprint(args).get(k)]
            raise DeepClusterError('--resume: %s was made with different settings (%s); use the '
                                   'same flags or another --work-dir' % (ckpt_path, ', '.join(diff)))
        model.load_state_dict(ck['model'])
        opt.load_state_dict(ck['optimizer'])
        sched.load_state_dict(ck['scheduler'])
        if scaler is not None and ck.get('scaler'):
            scaler.load_state_dict(ck['scaler'])
        start, rows, acc, best, elapsed = ck['step'], ck['rows'], ck['acc'], ck['best'], ck['elapsed']
        log.info('resuming from %s at step %d', ckpt_path, start)
    elif args.resume:
        log.info('--resume: no checkpoint in %s, starting from step 0', work)

    loader = Prefetcher(lambda s: data.batch(s, args.batch_size, args.seed))
    stream = isinstance(data, FolderData) and not data.in_memory
    log_csv = os.path.join(work, 'train_log.csv')
    n_cls = len(names)
    t0, t_last, s_last = time.perf_counter(), time.perf_counter(), start
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
        if done % args.val_every == 0 or done == args.steps:
            acc = _merge(acc, run_loss, run_correct)
            vl, va, conf = evaluate(model, data, args.batch_size * 4, device, amp_dtype, n_cls)
            row = {'step': done, 'loss': acc[0] / acc[2], 'acc': acc[1] / acc[2], 'val_loss': vl,
                   'val_acc': va, 'lr': opt.param_groups[0]['lr'],
                   'time': round(elapsed + time.perf_counter() - t0, 2)}
            rows.append(row)
            acc = [0.0, 0, 0]
            no_val = math.isnan(va)   # empty validation split: keep the last weights
            if best is None or args.keep == 'last' or no_val or (va, -vl) > (best['val_acc'], -best['val_loss']):
                best = {'step': done, 'val_acc': va, 'val_loss': vl, 'confusion': conf.tolist(),
                        'state': {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            _write_log(log_csv, rows)
        now = time.perf_counter()
        if now - t_last >= args.log_seconds or done == args.steps or done % args.val_every == 0:
            rate = (done - s_last) / max(now - t_last, 1e-9)
            last = rows[-1] if rows else {}
            log.info('step %d/%d  loss %.4f  acc %.3f  val_loss %s  val_acc %s | %.2f steps/s  '
                     '%.0f samples/s | ETA %s', done, args.steps, float(loss.detach()), float(
                         (logits.detach().argmax(1) == y).float().mean()),
                     '%.4f' % last['val_loss'] if last else '-', '%.3f' % last['val_acc'] if last else '-',
                     rate, rate * args.batch_size, _fmt_time((args.steps - done) / max(rate, 1e-9)))
            t_last, s_last = now, done
        if args.checkpoint_every and done % args.checkpoint_every == 0 and done < args.steps:
            acc = _merge(acc, run_loss, run_correct)
            _save_checkpoint(ckpt_path, model, opt, sched, scaler, done, rows, acc, best,
                             elapsed + time.perf_counter() - t0, args)
        if on_step is not None:
            on_step(done)

    total_time = elapsed + time.perf_counter() - t0
    if best is not None and args.keep == 'best':
        model.load_state_dict(best['state'])
    cfg['training'] = _card(args, data, device, total_time, t_start)
    last = rows[-1] if rows else {}
    cfg['metrics'] = {'val_acc': best['val_acc'] if best else None,
                      'val_loss': best['val_loss'] if best else None,
                      'kept_step': best['step'] if best else args.steps, 'keep': args.keep,
                      'final_val_acc': last.get('val_acc'), 'final_val_loss': last.get('val_loss'),
                      'final_train_loss': last.get('loss'), 'final_train_acc': last.get('acc'),
                      'confusion': best['confusion'] if best else None, 'class_names': names}
    save_model(args.out, model.cpu().to(memory_format=torch.contiguous_format), cfg)
    if args.plots:
        _plots(work, log_csv, best, names)
    if os.path.isfile(ckpt_path) and not args.keep_checkpoint:
        os.remove(ckpt_path)
    log.info('wrote %s (%s, %d classes, val acc %.3f, %s)', args.out, args.arch, n_cls,
             cfg['metrics']['val_acc'] or float('nan'), _fmt_time(total_time))
    return args.out


def _init_from(model, cfg, path):
    """Fine-tuning: start from a model file's weights. The architecture must match;
    the classification layer is kept only when the classes are the same."""
    from .network import read_model_file
    state, init_cfg = read_model_file(path)
    if (init_cfg.get('arch'), init_cfg.get('arch_params')) != (cfg['arch'], cfg['arch_params']):
        raise DeepClusterError('--init %s: architecture %s %s differs from this run\'s %s %s'
                               % (path, init_cfg.get('arch'), init_cfg.get('arch_params'),
                                  cfg['arch'], cfg['arch_params']))
    same_classes = list(init_cfg.get('class_names', [])) == list(cfg['class_names'])
    if not same_classes:
        state = {k: v for k, v in state.items() if not k.startswith('head.')}
    model.load_state_dict(state, strict=False)
    log.info('initialised from %s (%s)', path, 'all layers' if same_classes else
             'encoder only: new classes, new classification layer')
    card = init_cfg.get('training', {})
    return {'path': os.path.basename(path), 'layers': 'all' if same_classes else 'encoder',
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
        from . import plots
    except ImportError:
        log.warning('plots module not available: no training figures written')
        return
    if os.path.isfile(log_csv):
        plots.plot_training_curves(os.path.join(work, 'training_curves.png'), log_csv)
    if best is not None and best.get('confusion') is not None:
        plots.plot_confusion(os.path.join(work, 'confusion.png'), np.array(best['confusion']), names,
                             title='Validation confusion (step %d)' % best['step'])


def _card(args, data, device, total_time, t_start):
    hw = {'device': str(device), 'torch': torch.__version__, 'cpu_count': os.cpu_count(),
          'platform': platform.platform()}
    if device.type == 'cuda':
        hw['gpu'] = torch.cuda.get_device_name(device)
    card = dict(data.card)
    card.update({'command': 'deepcluster train ' + ' '.join(shlex.quote(a) for a in (args.argv or [])),
                 'seed': args.seed, 'steps': args.steps, 'batch_size': args.batch_size,
                 'samples_seen': args.steps * args.batch_size,
                 'optimizer': {'name': 'adam', 'lr': args.lr, 'betas': [args.beta1, args.beta2],
                               'weight_decay': args.weight_decay, 'schedule': args.schedule,
                               'warmup_steps': args.warmup_steps, 'clip_grad': args.clip_grad,
                               'label_smoothing': args.label_smoothing},
                 'class_balanced_batches': True, 'started': time.strftime('%Y-%m-%d %H:%M:%S',
                                                                          time.localtime(t_start)),
                 'seconds': round(total_time, 1), 'hardware': hw,
                 'init': getattr(args, 'init_card', None)})
    return card


# ======================================================================== CLI
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
                   help='fast: channels of its 5 convolutions (default 8 16 32 64 64)')
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


def finalise_args(args):
    args.argv = getattr(args, 'argv', None) or sys.argv[2:]
    if args.data and (args.structures or args.procedural):
        raise DeepClusterError('give either --data or --structures/--procedural, not both')
    if not args.data:
        args.box = args.box or 40
        args.voxel_size = args.voxel_size or 10.0
    args.device = str(pick_device(args.device))   # warns once if cuda is not there
    if args.sim_chunk is None:
        args.sim_chunk = 8 if args.device.startswith('cuda') else 1
    if args.val_every < 1:
        raise DeepClusterError('--val-every must be at least 1')
    if args.voxel_size is not None and not args.voxel_size > 0:
        raise DeepClusterError('--voxel-size must be positive')
    if args.tilt_range and len(args.tilt_range) > 2:
        raise DeepClusterError('--tilt-range: give DEG or MIN MAX')
    if not 0 <= args.val_fraction < 1:
        raise DeepClusterError('--val-fraction must be in [0, 1)')
    return args


def _run(args):
    train(finalise_args(args))
