"""Pick the torch device (a GPU when asked for and present, else the CPU) and the
precision the network runs in there."""
import logging

import torch

from deepcluster.core import DeepClusterError

log = logging.getLogger(__name__)


def pick_device(requested='auto'):
    """'auto' -> cuda if available else cpu; 'cuda'/'cuda:N' without a GPU falls
    back to the CPU with a warning (documented behaviour, never a crash)."""
    requested = (requested or 'auto').strip().lower()
    if requested == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if requested == 'cpu':
        return torch.device('cpu')
    if requested.startswith('cuda') or requested.isdigit():
        name = 'cuda:%s' % requested if requested.isdigit() else requested
        if not torch.cuda.is_available():
            log.warning('WARNING: %s requested but no CUDA GPU is available to torch; '
                        'running on the CPU instead', name)
            return torch.device('cpu')
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeepClusterError('--device %s: only %d GPU(s) visible' % (name, torch.cuda.device_count()))
        return dev
    raise DeepClusterError("--device %s: expected 'auto', 'cpu', 'cuda' or 'cuda:N'" % requested)


PRECISIONS = ('auto', 'fp32', 'bf16')


def native_bf16_cpu():
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX).
    Only there is bf16 inference faster than fp32 (1.6x for the default model on a
    2-core AVX512-BF16 machine); elsewhere it would be emulated, i.e. slower."""
    checks = [getattr(torch.cpu, n, None) for n in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    try:
        return any(c() for c in checks if c is not None)
    except Exception:   # private torch helpers: never let them break embedding
        return False


def pick_dtype(precision, device):
    """The dtype the network runs in: 'auto' -> bfloat16 on a CPU with native bf16,
    else float32 (also on GPUs: their fp32 speed is what was measured)."""
    precision = (precision or 'auto').strip().lower()
    if precision not in PRECISIONS:
        raise DeepClusterError('--precision %s: expected one of %s' % (precision, ', '.join(PRECISIONS)))
    if precision == 'auto':
        precision = 'bf16' if device.type == 'cpu' and native_bf16_cpu() else 'fp32'
    if precision == 'bf16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise DeepClusterError('--precision bf16: %s has no bfloat16 support; use fp32' % device)
    return torch.bfloat16 if precision == 'bf16' else torch.float32
