"""Numerics of deepcluster: no Scipion imports here, ever (see DESIGN.md)."""


class DeepClusterError(Exception):
    """An error the user caused and can fix: the CLI prints it as one line."""


def fmt_time(s):
    """Seconds as '3m05s' or '1h02m', for progress lines."""
    s = int(round(s))
    return '%dh%02dm' % (s // 3600, s % 3600 // 60) if s >= 3600 else '%dm%02ds' % (s // 60, s % 60)
