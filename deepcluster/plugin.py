"""The Scipion Plugin class (exposed as ``deepcluster.Plugin``)."""
import os
import sys

import pwem

from .constants import DEEPCLUSTER_DEVICE


class Plugin(pwem.Plugin):
    # pyworkflow locates a plugin's package (path, version, devel mode) through the
    # module of its Plugin class: that is the package root, where this is exposed.
    __module__ = 'deepcluster'
    _homeVar = None
    _pathVars = []
    _url = 'https://github.com/scipion-em/scipion-em-deepcluster'

    @classmethod
    def _defineVariables(cls):
        # Device for in-process steps: 'auto' uses a GPU when the protocol asks
        # for one and CUDA is present, else the CPU.
        cls._defineVar(DEEPCLUSTER_DEVICE, 'auto')

    @classmethod
    def defineBinaries(cls, env):
        # Pure Python plugin: torch & co. come with the pip install.
        pass

    @classmethod
    def getProgram(cls):
        """The CLI that heavy protocol steps run through runJob."""
        python = os.environ.get('SCIPION_PYTHON') or sys.executable
        return python, '-m deepcluster'
