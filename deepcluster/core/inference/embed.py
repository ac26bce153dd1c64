"""Batched, streaming inference: subtomograms -> 32-d shape features
(``python -m deepcluster embed``, see ``deepcluster.cli.embed``).

Every subtomogram goes through exactly the training preprocessing, one file at a
time and independently of the others:
  1. pad to a cube if it is not one (border mean);
  2. Fourier-resample from its voxel size (header or ``--voxel-size``) to the
     model's (same band-limited rule as ``volumes.resample``, batched in torch);
  3. centre-crop or pad to the model's box;
  4. zero mean, unit standard deviation;
  5. multiply by -1 when ``--invert-contrast`` (data with bright protein; the
     model expects the convention in its config, 'dark' = protein darker).
So inputs with different box or voxel sizes can be mixed: each is brought to the
model's geometry on its own (the log says when sizes differ). A background
thread reads and prepares the next batch while the network runs; only one or two
batches are in memory whatever the number of files. Outputs (``.npy`` of N x 32
float32 in input order and ``.csv`` beside it naming each row's file) are written
to temp names and renamed at the end, so an error leaves nothing half-written.
"""
import functools
import logging
import os
import queue
import threading
import time
import warnings

import mrcfile
import numpy as np
import torch

from deepcluster.core import DeepClusterError, fmt_time
from deepcluster.core.device import pick_device, pick_dtype
from deepcluster.core.model.network import inference_model, load_model, resolve_model_path
from deepcluster.core.inference.features import write_features
from deepcluster.core.inference.volumes import (list_volume_files, pad_to_cube, plausible_voxel_size,
                                               read_mrc_header, read_volume, tame_scale)

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64
CONTRAST_SAMPLE = 200      # files looked at to tell the data's contrast ('auto')
CONTRASTS = ('auto', 'dark', 'bright')
VOXEL_TOLERANCE = 1e-3   # relative: voxel sizes closer than this are taken as equal


# --------------------------------------------------------------- preprocessing
@functools.lru_cache(maxsize=32)
def _resample_crop_operator(n, voxel_size, target_voxel_size, box):
    """The 1-D complex matrix A (box x n) of 'Fourier-resample n -> m (spectrum
    cropped or zero-padded around DC), then centre-crop to box' (box <= m), as
    (Re A, u, v) with Im A = u v^T. The 3-D operation is A's tensor cube followed by
    the real part, which reproduces ``volumes.resample`` + ``fit_box`` exactly. Im A
    has rank one (the one unpaired bin at the edge of the kept spectrum, when its
    width is even) or is zero (u = v = None), so on a real input that real part is
    three real products and three rank-one corrections: ~3x faster than three
    complex products, ~9x the FFTs."""
    m = max(2, int(round(n * float(voxel_size) / float(target_voxel_size))))
    spec = np.fft.fftshift(np.fft.fft(np.eye(n), axis=0), axes=0)
    k = min(n, m)
    a, b = n // 2 - k // 2, m // 2 - k // 2
    full = np.zeros((m, n), complex)
    full[b:b + k] = spec[a:a + k]
    c = (m - box) // 2
    op = (np.fft.ifft(np.fft.ifftshift(full, axes=0), axis=0) * (m / n))[c:c + box]
    uu, sv, vt = np.linalg.svd(op.imag)
    if sv[0] <= 1e-9 * np.abs(op).max():
        return torch.from_numpy(op.real.astype(np.float32)), None, None
    assert len(sv) < 2 or sv[1] <= 1e-6 * sv[0], 'Im A is not of rank one'
    return tuple(torch.from_numpy(t.astype(np.float32)) for t in (op.real, uu[:, 0] * sv[0], vt[0]))


def _resample_crop_batch(x, voxel_size, target_voxel_size, box):
    """(B, n, n, n) -> (B, box, box, box): resample to the target voxel size, then
    centre-crop/pad to box (same result as volumes.resample + volumes.fit_box)."""
    n = x.shape[-1]
    m = max(2, int(round(n * float(voxel_size) / float(target_voxel_size))))
    if m == n:
        return _fit_box_batch(x, box)
    r, u, v = (t if t is None else t.to(x.device)      # m < box: resample, then pad below
               for t in _resample_crop_operator(n, float(voxel_size), float(target_voxel_size), min(m, box)))
    y = torch.einsum('ai,nijk->najk', r, x)
    y = torch.einsum('bj,najk->nabk', r, y)
    y = torch.einsum('ck,nabk->nabc', r, y)
    if u is None:
        return _fit_box_batch(y, box)
    # Re(A x A x A) = R x R x R - (R x I x I + I x R x I + I x I x R), with I = u v^T
    xv = x @ v                                                   # (B, i, j): v along k
    ri = (xv @ v) @ r.T                                          # axis i through R, j and k through v
    rj = (v @ xv) @ r.T
    rk = (v @ (v @ x)) @ r.T
    uu = torch.outer(u, u)
    y.addcmul_(ri[:, :, None, None], uu[None, None, :, :], value=-1)     # indices (B, a, b, c)
    y.addcmul_(rj[:, None, :, None], uu[None, :, None, :], value=-1)
    y.addcmul_(rk[:, None, None, :], uu[None, :, :, None], value=-1)
    return _fit_box_batch(y, box)          # pads with the border mean where m < box


def _fit_box_batch(x, box):
    """Centre-crop or pad a (B, m, m, m) tensor to box^3 (pad with each border mean)."""
    m = x.shape[-1]
    if m == box:
        return x
    if m > box:
        a = (m - box) // 2
        return x[..., a:a + box, a:a + box, a:a + box]
    border = torch.ones((m, m, m), dtype=torch.bool, device=x.device)
    border[1:-1, 1:-1, 1:-1] = False
    fill = x[:, border].mean(dim=1)
    out = fill.view(-1, 1, 1, 1).expand(x.shape[0], box, box, box).clone()
    a = (box - m) // 2
    out[:, a:a + m, a:a + m, a:a + m] = x
    return out


def _normalise_batch(x):
    """Zero mean, unit SD per volume (constant volumes -> 0). Two passes (mean, then
    the norm of the centred values): torch's one-pass ``std`` is ~10x slower on a CPU
    and was the slowest step of embedding from files."""
    flat = x.reshape(x.shape[0], -1)
    c = flat - flat.mean(dim=1, keepdim=True)
    sd = torch.linalg.vector_norm(c, dim=1, keepdim=True) / c.shape[1] ** 0.5
    return c.mul_(torch.where(sd > 0, sd.reciprocal(), torch.zeros_like(sd))).view_as(x)


def prepare_batch(vols, voxel_sizes, config, invert_contrast=False):
    """Bring volumes of any cube size / voxel size to the model's input (B, box^3).

    ``vols``: list of float32 arrays (z, y, x); ``voxel_sizes``: list of Å.
    Volumes sharing (size, voxel size) are resampled together.
    """
    box, target = int(config['box']), float(config['voxel_size'])
    out = torch.empty((len(vols), box, box, box), dtype=torch.float32)
    groups = {}
    vols = [pad_to_cube(tame_scale(np.asarray(v, dtype=np.float32))) for v in vols]
    for i, (v, vx) in enumerate(zip(vols, voxel_sizes)):
        same = abs(vx - target) <= VOXEL_TOLERANCE * target
        groups.setdefault((v.shape[0], target if same else round(float(vx), 6)), []).append(i)
    for (n, vx), idx in groups.items():
        x = torch.from_numpy(np.stack([vols[i] for i in idx]))
        out[idx] = (_resample_crop_batch(x, vx, target, box) if vx != target
                    else _fit_box_batch(x, box))
    out = _normalise_batch(out)
    return -out if invert_contrast else out


# ------------------------------------------------------------------ model side
class Embedder:
    """A loaded model ready for inference on one device."""

    def __init__(self, model, config, device='cpu', precision='auto'):
        """``precision``: 'auto' (bf16 on a CPU with native bf16, else fp32), 'fp32' or
        'bf16'. bf16 features have a mean cosine of 0.99996 to fp32 ones (min 0.995) and
        cluster the same (mean k-means V over 11 scenarios x 4 seeds 0.7640 vs 0.7646:
        benchmarks/results/bench_compare_precision.json)."""
        self.device = torch.device(device)
        self.dtype = pick_dtype(precision, self.device)
        self.config = config
        self.model = inference_model(model).to(self.device, self.dtype)

    @classmethod
    def from_file(cls, path=None, device='cpu', precision='auto'):
        path = resolve_model_path(path)
        model, config = load_model(path, 'cpu')
        return cls(model, config, device, precision)

    @torch.inference_mode()
    def __call__(self, batch):
        """(B, box, box, box) prepared tensor -> (B, 32) float32 numpy."""
        x = batch.to(self.device, self.dtype, non_blocking=True).unsqueeze(1)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.model.features(x).float().cpu().numpy()


def embed_arrays(vols, model, config, voxel_size=None, invert_contrast=False,
                 batch_size=DEFAULT_BATCH, device='cpu'):
    """Features of in-memory volumes (array (N, D, D, D) or a list of cubes).

    ``voxel_size``: one number or one per volume (default: the model's).
    ``model`` may be an nn.Module or an ``Embedder``.
    """
    emb = model if isinstance(model, Embedder) else Embedder(model, config, device)
    n = len(vols)
    if n == 0:
        raise DeepClusterError('no volumes to embed')
    vs = voxel_size if voxel_size is not None else emb.config['voxel_size']
    vs = list(vs) if np.ndim(vs) else [float(vs)] * n
    out = np.empty((n, emb.config.get('feature_dim', 32)), np.float32)
    for a in range(0, n, batch_size):
        chunk = [np.asarray(v, np.float32) for v in vols[a:a + batch_size]]
        for v in chunk:
            if not np.isfinite(v).all():
                raise DeepClusterError('volume contains NaN or infinite voxels')
        out[a:a + len(chunk)] = emb(prepare_batch(chunk, vs[a:a + len(chunk)], emb.config,
                                                  invert_contrast))
    return out


# ----------------------------------------------------------------- file input
def scan_headers(files, voxel_size=None):
    """(voxel sizes, shapes) from the MRC headers only; fails early and clearly."""
    sizes, shapes = [], []
    for p in files:
        try:
            layout = read_mrc_header(p)
            if layout:
                shape, _, _, vx = layout
                volume_stack = False
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    with mrcfile.open(p, header_only=True, permissive=True) as mrc:
                        h = mrc.header
                        shape = (int(h.nz), int(h.ny), int(h.nx))
                        vx = float(mrc.voxel_size.x)
                        volume_stack = int(h.ispg) >= 401
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeepClusterError('%s: not a readable MRC file (%s)' % (p, msg))
        if min(shape) < 2:
            raise DeepClusterError('%s: not a 3D volume (shape %s)' % (p, shape))
        if volume_stack:
            raise DeepClusterError('%s: a stack of volumes, not one subtomogram; split it' % p)
        if voxel_size is None and plausible_voxel_size(vx) is None:
            raise DeepClusterError('%s: the header has no usable voxel size (%g A); pass --voxel-size'
                                   % (p, vx))
        sizes.append(float(voxel_size) if voxel_size is not None else vx)
        shapes.append(shape)
    return sizes, shapes


def _reader(files, sizes, config, invert, batch_size, q, stop):
    """Background thread: read + prepare batches, put (start, tensor) or an error."""
    try:
        for a in range(0, len(files), batch_size):
            if stop.is_set():
                return
            vols = [read_volume(p)[0] for p in files[a:a + batch_size]]
            q.put((a, prepare_batch(vols, sizes[a:a + batch_size], config, invert)))
        q.put(None)
    except BaseException as e:   # hand it to the main thread
        q.put(e)


def data_contrast(files, n=CONTRAST_SAMPLE):
    """('dark' | 'bright', median skewness): which side of the background the
    matter of a data set is on. Protein, membranes and beads are sparse, dense
    objects, so the (lightly smoothed) intensities of a subtomogram have a heavy
    tail on their side: negative skewness for dark protein. The median over up to
    ``n`` evenly spaced files is robust to the odd empty or bead-filled box (on
    simulated SHREC-like data: median -0.59 dark vs +0.64 bright; single
    subtomograms are right 91-94% of the time)."""
    from scipy.ndimage import gaussian_filter
    from scipy.stats import skew
    idx = np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int))
    values = []
    for i in idx:
        v = read_volume(files[i])[0]
        a, b = [s // 4 for s in v.shape], [s - s // 4 for s in v.shape]
        c = gaussian_filter(v.astype(np.float32), 1.0)[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        if c.std() > 0:
            values.append(float(skew(c.ravel())))
    med = float(np.median(values)) if values else 0.0
    return ('bright' if med > 0 else 'dark'), med


def resolve_contrast(contrast, files, config):
    """Whether to invert the data for the model: 'dark'/'bright' as the user says,
    'auto' from ``data_contrast``; logged either way."""
    if contrast not in CONTRASTS:
        raise DeepClusterError('--contrast %s: expected one of %s' % (contrast, ', '.join(CONTRASTS)))
    model_contrast = config.get('contrast', 'dark')
    if contrast == 'auto':
        contrast, med = data_contrast(files)
        log.info('contrast: protein looks %s in these data (median skewness %+.2f over %d files); '
                 'the model expects %s protein%s', contrast, med, min(len(files), CONTRAST_SAMPLE),
                 model_contrast, ': inverting' if contrast != model_contrast else '')
    elif contrast != model_contrast:
        log.info('contrast: %s protein as given; the model expects %s: inverting', contrast, model_contrast)
    return contrast != model_contrast


def auto_threads():
    """CPU threads for the network while a reader thread prepares the next batch:
    one core for the reader, the rest for the network (at least 1)."""
    return max(1, (os.cpu_count() or 2) - 1)


def embed_files(files, model_path=None, voxel_size=None, device='auto', batch_size=DEFAULT_BATCH,
                invert_contrast=False, out=None, embedder=None, progress=True, threads=None,
                contrast=None, precision='auto', adapt=None):
    """Features (N x 32 float32, input order) of MRC files; optionally write ``out``
    (.npy) and the ``.csv`` beside it. ``files``: anything ``list_volume_files`` takes.
    ``contrast``: the data's protein contrast, 'auto' | 'dark' | 'bright' (None: use
    ``invert_contrast`` as given). ``threads``: torch CPU threads during the call
    (None: leave as is; 0: ``auto_threads``). ``precision``: see ``Embedder``.
    ``adapt``: keywords of ``adapt.adapt_for_embedding`` (mode, minutes, steps, seed):
    the model is first adapted to these files, the adapted model and a report are
    written beside ``out`` (``features_adapted.pt``, ``features_adapt.json``)."""
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or auto_threads())
        try:
            return embed_files(files, model_path, voxel_size, device, batch_size, invert_contrast,
                               out, embedder, progress, contrast=contrast, precision=precision,
                               adapt=adapt)
        finally:
            torch.set_num_threads(before)
    files = list_volume_files(files)
    if batch_size < 1:
        raise DeepClusterError('--batch-size must be at least 1, got %d' % batch_size)
    emb = embedder or Embedder.from_file(model_path, pick_device(device), precision)
    if progress:
        log.info('network: %s, %s', emb.device, 'bf16' if emb.dtype == torch.bfloat16 else 'fp32')
    cfg = emb.config
    sizes, shapes = scan_headers(files, voxel_size)
    _report_geometry(files, sizes, shapes, cfg)
    if contrast is not None:
        invert_contrast = resolve_contrast(contrast, files, cfg)
    finish_adapt = None
    if adapt and adapt.get('mode', 'none') != 'none':
        from deepcluster.core.inference.adapt import adapt_for_embedding
        emb, finish_adapt = adapt_for_embedding(files, sizes, invert_contrast, model_path, emb.device,
                                                precision, out=out, **adapt)
        cfg = emb.config
    n = len(files)
    feats = np.empty((n, cfg.get('feature_dim', 32)), np.float32)
    q, stop = queue.Queue(maxsize=2), threading.Event()
    th = threading.Thread(target=_reader, args=(files, sizes, cfg, invert_contrast, batch_size, q, stop),
                          daemon=True)
    t0 = last = time.perf_counter()
    th.start()
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            a, batch = item
            feats[a:a + len(batch)] = emb(batch)
            now = time.perf_counter()
            done = a + len(batch)
            if progress and (now - last > 10 or done == n):
                last = now
                rate = done / max(now - t0, 1e-9)
                log.info('embedded %d/%d  %.0f subtomograms/s  ETA %s', done, n, rate,
                         fmt_time((n - done) / max(rate, 1e-9)))
    finally:
        stop.set()
        while th.is_alive():   # unblock the reader if it waits on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        th.join()
    if out:
        write_features(out, feats, files)
    if finish_adapt:
        finish_adapt()
    return feats


def _report_geometry(files, sizes, shapes, cfg):
    distinct = {}
    for s, v in zip(shapes, sizes):
        distinct.setdefault((s, round(v, 3)), 0)
        distinct[(s, round(v, 3))] += 1
    desc = ', '.join('%d x %s at %g A' % (c, 'x'.join(map(str, s)), v)
                     for (s, v), c in sorted(distinct.items(), key=lambda kv: -kv[1]))
    msg = ('%d subtomograms (%s) -> model box %d at %g A/voxel'
           % (len(files), desc, cfg['box'], cfg['voxel_size']))
    if len(distinct) > 1:
        msg += ' (sizes differ: each file is resampled and cropped/padded on its own)'
    log.info(msg)
