"""scipion-em-deepcluster: alignment-free 3D shape classification of subtomograms.

The numerics live in ``deepcluster.core`` and never need Scipion. ``Plugin`` (the
Scipion face) is resolved lazily, so importing the package -- the CLI, the
core API, the headless test setup -- does not import pyworkflow, whose config
is read once at import time.
"""
__version__ = '0.1.0'
_references = ['Moebel2022', 'Moebel2021']


def __getattr__(name):
    if name == 'Plugin':
        from .plugin import Plugin
        return Plugin
    raise AttributeError("module 'deepcluster' has no attribute %r" % name)
