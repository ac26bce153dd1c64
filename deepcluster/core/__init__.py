"""Numerics of deepcluster: no Scipion imports here, ever (see DESIGN.md)."""


class DeepClusterError(Exception):
    """An error the user caused and can fix: the CLI prints it as one line."""
