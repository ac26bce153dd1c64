"""Scipion objects of the plugin (the sqlite mapper rebuilds them from here)."""
import json

import pyworkflow.object as pwobj
from pwem.objects import EMObject


class DeepClusterModel(EMObject):
    """A trained shape encoder: the .pt model file plus what a user needs to pick it."""

    def __init__(self, filename=None, **kwargs):
        EMObject.__init__(self, **kwargs)
        self._filename = pwobj.String(filename)
        self._arch = pwobj.String()
        self._voxelSize = pwobj.Float()
        self._box = pwobj.Integer()
        self._classNames = pwobj.String()   # JSON list

    def getFileName(self):
        return self._filename.get()

    def setFileName(self, filename):
        self._filename.set(filename)

    def getArch(self):
        return self._arch.get()

    def getVoxelSize(self):
        return self._voxelSize.get()

    def getBox(self):
        return self._box.get()

    def getClassNames(self):
        return json.loads(self._classNames.get() or '[]')

    def setFromConfig(self, config):
        """Copy the searchable facts of a model file's config dict."""
        self._arch.set(config.get('arch'))
        self._voxelSize.set(config.get('voxel_size'))
        self._box.set(config.get('box'))
        self._classNames.set(json.dumps(list(config.get('class_names', []))))

    def __str__(self):
        return '%s model (%s classes, %s A/px, box %s)' % (
            self.getArch(), len(self.getClassNames()), self.getVoxelSize(), self.getBox())
