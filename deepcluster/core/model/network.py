"""The encoder that maps a subtomogram to a 32-d shape feature, and the model file.

Two architectures, chosen by name (``config['arch']``):

``fast`` (default)
    Designed for throughput on a CPU: the first convolution (4^3, stride 2) halves
    the grid at once, every further stage is one 3^3 convolution with BatchNorm and
    ReLU (channels 8 -> 16 (stride 2) -> 32 -> 64 (stride 2) -> 128, grids 20^3,
    10^3, 10^3, 5^3, 5^3 for a 40^3 box), and global average + max pooling makes the
    descriptor independent of where in the box a motif sits (what orientation
    invariance needs; it also makes the network work at any box). Pooled 256 -> 256
    -> 32 (the feature, penultimate layer; L2-normalised for k-means) -> classes.
    About 56 M multiply-adds per 40^3 subtomogram, ~55x fewer than ``deepfinder``,
    which keeps its CPU embedding >= 50x faster (measured 52-57x); the shipped
    accurate model doubles the first four stages (160 M, 2.5x slower).
    At inference the BatchNorms are folded into the convolutions and activations
    run channels-last (``inference_model``).

``deepfinder``
    The reference of the paper (Moebel et al. 2021, Fig. 1A): the DeepFinder U-Net
    encoder (3^3 convolutions 32,32 | pool | 48,48 | pool | 64,64,64,64, ReLU) then
    fully connected layers flatten -> 128 -> 32 (feature) -> classes.

The model file is one torch file ``{'format': FORMAT, 'state_dict': ..., 'config':
plain dict}`` that loads with ``torch.load(..., weights_only=True)``.
"""
import copy
import hashlib
import os
import pickle
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepcluster.core import DeepClusterError
from deepcluster.core.outputs import atomic_path

FORMAT = 'deepcluster-model/1'
FEATURE_DIM = 32
ARCHITECTURES = ('fast', 'deepfinder')
DEFAULT_ARCH = 'fast'


# ------------------------------------------------------------------ networks
def _conv_bn(ci, co, k, stride, pad):
    return nn.Sequential(nn.Conv3d(ci, co, k, stride=stride, padding=pad, bias=False),
                         nn.BatchNorm3d(co), nn.ReLU(inplace=True))


class FastNet(nn.Module):
    """Strided conv stem, BN+ReLU stages, global avg+max pooling (see module doc)."""

    def __init__(self, n_classes, widths=(8, 16, 32, 64, 128), hidden=256,
                 feature_dim=FEATURE_DIM, l2_features=True):
        super().__init__()
        w = list(widths)
        if len(w) != 5:
            raise DeepClusterError('fast architecture needs 5 widths, got %s' % (w,))
        self.encoder = nn.Sequential(
            _conv_bn(1, w[0], 4, 2, 1),        # 40 -> 20
            _conv_bn(w[0], w[1], 3, 2, 1),     # 20 -> 10
            _conv_bn(w[1], w[2], 3, 1, 1),     # 10
            _conv_bn(w[2], w[3], 3, 2, 1),     # 10 -> 5
            _conv_bn(w[3], w[4], 3, 1, 1))     # 5
        self.embed = nn.Sequential(nn.Linear(2 * w[4], hidden), nn.ReLU(inplace=True),
                                   nn.Linear(hidden, feature_dim))
        self.head = nn.Linear(feature_dim, n_classes)
        self.l2_features = l2_features

    def _pooled(self, x):
        x = self.encoder(x)
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], 1)

    def forward_both(self, x):
        """(logits, features): the classifier sees the raw 32-d layer."""
        f = self.embed(self._pooled(_as_batch(x)))
        return self.head(f), f

    def forward(self, x):
        return self.forward_both(x)[0]

    def features(self, x):
        f = self.embed(self._pooled(_as_batch(x)))
        return F.normalize(f, dim=1) if self.l2_features else f


class DeepFinderNet(nn.Module):
    """DeepFinder encoder + fully connected layers (the paper's network)."""

    def __init__(self, n_classes, box, hidden=128, feature_dim=FEATURE_DIM, l2_features=False):
        super().__init__()
        if box % 4:
            raise DeepClusterError('deepfinder architecture needs a box divisible by 4, got %d' % box)

        def conv(ci, co):
            return [nn.Conv3d(ci, co, 3, padding=1), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(
            *conv(1, 32), *conv(32, 32), nn.MaxPool3d(2),
            *conv(32, 48), *conv(48, 48), nn.MaxPool3d(2),
            *conv(48, 64), *conv(64, 64), *conv(64, 64), *conv(64, 64))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * (box // 4) ** 3, hidden),
                                   nn.ReLU(inplace=True), nn.Linear(hidden, feature_dim),
                                   nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, n_classes)
        self.l2_features = l2_features

    def forward_both(self, x):
        f = self.embed(self.encoder(_as_batch(x)))
        return self.head(f), f

    def forward(self, x):
        return self.forward_both(x)[0]

    def features(self, x):
        f = self.embed(self.encoder(_as_batch(x)))
        return F.normalize(f, dim=1) if self.l2_features else f


def _as_batch(x):
    """(B, D, H, W) or (B, 1, D, H, W) -> (B, 1, D, H, W)."""
    return x.unsqueeze(1) if x.dim() == 4 else x


# ------------------------------------------------------------------ config / build
def default_config(arch=DEFAULT_ARCH, class_names=(), box=40, voxel_size=10.0, **extra):
    """A complete model config (plain dict); ``extra`` overrides or adds keys."""
    if arch not in ARCHITECTURES:
        raise DeepClusterError('--arch %s: expected one of %s' % (arch, ', '.join(ARCHITECTURES)))
    cfg = {
        'format': FORMAT,
        'arch': arch,
        'arch_params': ({'widths': [8, 16, 32, 64, 128], 'hidden': 256, 'l2_features': True}
                        if arch == 'fast' else {'hidden': 128, 'l2_features': False}),
        'feature_dim': FEATURE_DIM,
        'box': int(box),
        'voxel_size': float(voxel_size),
        'class_names': [str(c) for c in class_names],
        'normalisation': 'per-subtomogram zero mean, unit standard deviation',
        'contrast': 'dark',   # protein darker than the background (the simulator's default)
        'training': {},       # data card: command, structures, counts, seeds, time, hardware
        'metrics': {},
    }
    cfg.update(extra)
    return cfg


def check_config(config):
    """A model config's values in range (a corrupt or hand-edited file gets one line
    naming the key, not a traceback or a network of absurd size)."""
    from deepcluster.core.checks import check_number
    from deepcluster.core.inference.volumes import VOXEL_RANGE
    if not isinstance(config, dict):
        raise DeepClusterError('config: expected a dict, got %s' % type(config).__name__)
    if config.get('arch') not in ARCHITECTURES:
        raise DeepClusterError('unknown architecture %r (expected one of %s)'
                               % (config.get('arch'), ', '.join(ARCHITECTURES)))
    check_number('config box', config.get('box'), 8, 512, integer=True)
    check_number('config voxel_size', config.get('voxel_size'), *VOXEL_RANGE)
    check_number('config feature_dim', config.get('feature_dim', FEATURE_DIM), 1, 4096, integer=True)
    names = config.get('class_names') or []
    if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
        raise DeepClusterError('config class_names: expected a list of names')
    p = config.get('arch_params') or {}
    if not isinstance(p, dict):
        raise DeepClusterError('config arch_params: expected a dict')
    if 'widths' in p:
        w = p['widths']
        if not isinstance(w, (list, tuple)) or len(w) != 5:
            raise DeepClusterError('config widths %r: expected 5 channel counts' % (w,))
        for v in w:
            check_number('config widths', v, 1, 4096, integer=True)
    check_number('config hidden', p.get('hidden', 1), 1, 65536, integer=True)
    if config.get('contrast', 'dark') not in ('dark', 'bright'):
        raise DeepClusterError("config contrast %r: expected 'dark' or 'bright'" % config.get('contrast'))


def build_model(config):
    """Instantiate the (untrained) network a config describes."""
    check_config(config)
    arch = config.get('arch')
    p = dict(config.get('arch_params') or {})
    n = len(config.get('class_names') or []) or 1
    fd = int(config.get('feature_dim', FEATURE_DIM))
    if arch == 'fast':      # files from before --widths/--hidden hold the widths of that time
        return FastNet(n, widths=p.get('widths', (8, 16, 32, 64, 64)), hidden=p.get('hidden', 64),
                       feature_dim=fd, l2_features=p.get('l2_features', True))
    if arch == 'deepfinder':
        return DeepFinderNet(n, int(config['box']), hidden=p.get('hidden', 128), feature_dim=fd,
                             l2_features=p.get('l2_features', False))
    raise DeepClusterError('unknown architecture %r (expected one of %s)' % (arch, ', '.join(ARCHITECTURES)))


def inference_model(model):
    """An eval-mode copy tuned for inference: BatchNorm folded into the convolutions,
    channels-last activations. Same features as ``model.eval()`` up to rounding."""
    m = copy.deepcopy(model).eval()
    _fold_batchnorm(m)
    return m.to(memory_format=torch.channels_last_3d)


def _fold_batchnorm(module):
    """Replace every Conv3d directly followed by BatchNorm3d (in a Sequential) by one
    Conv3d with the BatchNorm's eval-mode affine map folded in, recursively."""
    for name, child in module.named_children():
        _fold_batchnorm(child)
        if isinstance(child, nn.Sequential):
            layers, out, i = list(child), [], 0
            while i < len(layers):
                a, b = layers[i], layers[i + 1] if i + 1 < len(layers) else None
                if isinstance(a, nn.Conv3d) and isinstance(b, nn.BatchNorm3d):
                    out.append(_fold(a, b))
                    i += 2
                else:
                    out.append(a)
                    i += 1
            if len(out) != len(layers):
                setattr(module, name, nn.Sequential(*out))


@torch.no_grad()
def _fold(conv, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused.to(conv.weight.device)


# ------------------------------------------------------------------ model file
# The models shipped inside the package (``make model``), by the name --model takes:
# 'default' keeps the embedding >= 50x faster than the DeepFinder reference; 'accurate'
# (twice the channels in the first four stages) is 2.5x slower per subtomogram and
# better on nearly every benchmark.
SHIPPED_MODELS = ('default', 'accurate')


def default_model_path():
    """The shipped model used when none is given."""
    return shipped_model_path('default')


def shipped_model_path(name):
    if name not in SHIPPED_MODELS:
        raise DeepClusterError('%s: not a shipped model (expected one of %s)' % (name, ', '.join(SHIPPED_MODELS)))
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'models', name + '.pt')


def plain(obj):
    """Convert a config to plain Python (dict/list/str/int/float/bool/None) so the
    file loads with weights_only=True."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return plain(obj.detach().cpu().tolist())
    if obj is None:
        return None
    for t in (bool, int, float, str):   # exact built-in types (e.g. TorchVersion is a str)
        if isinstance(obj, t):
            return t(obj)
    return str(obj)


def save_model(path, model, config):
    """Write ``{'format', 'state_dict', 'config'}`` to ``path`` atomically."""
    config = plain(dict(config, format=FORMAT))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({'format': FORMAT, 'state_dict': state, 'config': config}, tmp)
    return path


def read_model_file(path):
    """(state_dict, config) of a model file, or a one-line DeepClusterError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DeepClusterError('%s: no such model file' % path)
    if not zipfile.is_zipfile(path):
        raise DeepClusterError('%s: not a deepcluster model file (not a PyTorch zip archive); '
                               'give a .pt written by deepcluster train' % path)
    try:
        blob = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text is a page long; the cause is always the same
        raise DeepClusterError('%s: not a deepcluster model file (it holds Python objects that a safe '
                               'weights-only load refuses, e.g. a whole pickled network); give a .pt '
                               'written by deepcluster train' % path)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepClusterError('%s: not a deepcluster model file (%s)' % (path, msg[:200]))
    if not (isinstance(blob, dict) and blob.get('format') == FORMAT
            and isinstance(blob.get('state_dict'), dict) and isinstance(blob.get('config'), dict)):
        raise DeepClusterError('%s: not a deepcluster model file (expected a dict with format %r, '
                               'state_dict and config)' % (path, FORMAT))
    return blob['state_dict'], blob['config']


def load_model(path, device='cpu'):
    """Return (model in eval mode on ``device``, config)."""
    state, config = read_model_file(path)
    try:
        model = build_model(config)
        model.load_state_dict(state)
    except DeepClusterError as e:
        raise DeepClusterError('%s: %s' % (path, e))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepClusterError('%s: model weights do not match its config (%s)' % (path, msg[:200]))
    return model.to(device).eval(), config


def resolve_model_path(path=None):
    """``path`` if given (a file, or the name of a shipped model), else the shipped
    default model; a clear error if a shipped model is missing."""
    if not path:
        p = default_model_path()
    elif os.fspath(path) in SHIPPED_MODELS and not os.path.exists(path):   # a file of that name wins
        p = shipped_model_path(os.fspath(path))
    else:
        return os.fspath(path)
    if not os.path.isfile(p):
        raise DeepClusterError('the shipped model %s is not installed: pass --model MODEL.pt (from '
                               '`deepcluster train`) or run `make model`' % p)
    return p


def model_sha256(path=None):
    """Hex digest of a model file (default: the shipped one), so a benchmark result
    can name the exact weights it measured."""
    with open(resolve_model_path(path), 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()
