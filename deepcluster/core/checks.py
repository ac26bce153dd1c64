"""Checks of the numbers a user gives (flags, model configs): one line naming the
value and the allowed range, so NaN, inf, 0 or 1e9 never reach the numerics."""
import math

from deepcluster.core import DeepClusterError

SEED_MAX = 2 ** 32 - 1      # numpy/scikit-learn seeds


def check_number(name, value, lo=None, hi=None, lo_open=False, integer=False, none_ok=False):
    """``value`` if it is a finite number within [lo, hi] (``lo_open``: > lo), else a
    one-line DeepClusterError; ``integer``: a whole number."""
    if value is None and none_ok:
        return None
    shown = '%g' % value if isinstance(value, float) else value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DeepClusterError('%s %r: expected a number' % (name, value))
    if not math.isfinite(v):
        raise DeepClusterError('%s %s: must be a finite number' % (name, shown))
    if integer and v != int(v):
        raise DeepClusterError('%s %s: must be a whole number' % (name, shown))
    bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi)
    if bad:
        if lo is not None and hi is not None:
            rng = ('above %g and at most %g' if lo_open else 'within %g and %g') % (lo, hi)
        elif lo is not None:
            rng = ('above %g' if lo_open else 'at least %g') % lo
        else:
            rng = 'at most %g' % hi
        raise DeepClusterError('%s %s: must be %s' % (name, shown, rng))
    return int(v) if integer else v


def check_seed(name, value):
    return check_number(name, value, 0, SEED_MAX, integer=True)
