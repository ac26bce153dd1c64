"""Pick the torch device: a GPU when asked for and present, else the CPU."""
import logging

import torch

from . import DeepClusterError

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
