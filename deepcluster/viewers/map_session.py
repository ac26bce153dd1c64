"""The state behind the interactive 2-D map viewer, without Tk: the items of a
run (ids, files, features, classes, true labels), the cached map, the
selection, and turning a selection into a new protocol of the project.

The Tk window (map_window.py) only draws this and forwards the mouse; tests
drive this class directly. The numerics are in core.analysis.embedding_map and
core.analysis.selection.
"""
import os
import time

import numpy as np

from deepcluster.core.analysis import selection as sel
from deepcluster.core.analysis.embedding_map import MAP_METHODS, MAX_POINTS, cached_map

from ..constants import LABEL_ATTR

COLOUR_MODES = ('class', 'true label', 'distance to class centre')
MODE_LABELS = {'subset': 'subset', 'split': 'new class from the selection',
               'merge': 'merged classes'}


class MapSession:
    """The items of one embed / cluster / classify run and a selection on their map."""

    def __init__(self, protocol, max_points=MAX_POINTS, seed=0):
        self.protocol = protocol
        self.max_points = max_points
        self.seed = seed
        self._load()
        self.mask = np.zeros(self.n, bool)
        self.map = None
        self.method = None

    # ------------------------------------------------------------------ loading
    def _load(self):
        prot = self.protocol
        classes = getattr(prot, 'classes', None)
        if classes is not None:
            self.itemsPointer = self._imagesPointer()
            classOf, distOf = {}, {}
            for cls in classes.iterItems(orderBy='id'):
                for item in cls.iterItems(orderBy='id'):
                    classOf[item.getObjId()] = cls.getObjId()
                    d = getattr(item, '_dcDistance', None)
                    distOf[item.getObjId()] = d.get() if d is not None else np.nan
        else:
            self.itemsPointer = self._outputPointer('subtomograms')
            classOf, distOf = None, None
        subtomos = self.itemsPointer.get()
        if subtomos is None:
            raise ValueError('this run has no subtomograms to map yet')
        ids, files, locs, truth = [], [], [], []
        for item in subtomos.iterItems(orderBy='id'):
            ids.append(item.getObjId())
            files.append(item.getFileName())
            locs.append(item.getLocation())
            lab = getattr(item, LABEL_ATTR, None)
            truth.append(lab.get() if lab is not None else None)
        self.ids = np.array(ids, dtype=np.int64)
        self.files = files
        self.locations = locs
        self.truth = truth if all(t is not None for t in truth) else None
        self.features = prot.readFeatures(subtomos)
        if classOf is not None:
            self.classes = np.array([classOf.get(i, 0) for i in ids], dtype=np.int64)
            dist = np.array([distOf.get(i, np.nan) for i in ids], dtype=float)
        else:
            self.classes = np.ones(len(ids), dtype=np.int64)
            dist = np.full(len(ids), np.nan)
        if np.isnan(dist).any():      # no stored distance: to the class's mean feature
            for c in np.unique(self.classes):
                m = self.classes == c
                dist[m] = np.linalg.norm(self.features[m] - self.features[m].mean(0), axis=1)
        self.distance = dist
        self.hasClasses = classOf is not None

    def _outputPointer(self, name):
        from pyworkflow.object import Pointer
        return Pointer(self.protocol, extended=name)

    def _imagesPointer(self):
        """The set the classes classified: cluster's input, classify's output."""
        if hasattr(self.protocol, 'subtomograms'):       # classify
            return self._outputPointer('subtomograms')
        return self.protocol.inputSubtomograms               # cluster

    @property
    def n(self):
        return len(self.ids)

    def classIds(self):
        return sorted(set(self.classes.tolist()))

    def cacheDir(self):
        return self.protocol._getExtraPath('map')

    # ------------------------------------------------------------------ the map
    def computeMap(self, method='tsne'):
        """The 2-D map by ``method`` (tsne | umap | pca), computed once per run and
        method and kept in the run's extra/map folder. Returns (map, was cached)."""
        if method not in MAP_METHODS:
            raise ValueError('map method %r: use one of %s' % (method, MAP_METHODS))
        self.map, cached = cached_map(self.features, self.cacheDir(), method, self.seed,
                                      self.max_points)
        self.method = method
        return self.map, cached

    @property
    def xy(self):
        return self.map.xy

    def colourValues(self, mode):
        """(per-item values, 'categorical' | 'continuous', legend title) to colour by."""
        if mode == 'true label':
            if self.truth is None:
                raise ValueError('these subtomograms carry no true label')
            return np.array(self.truth, dtype=object), 'categorical', 'true label'
        if mode == 'distance to class centre':
            return self.distance, 'continuous', 'distance to class centre (feature units)'
        return self.classes, 'categorical', 'class'

    # ------------------------------------------------------------------ selecting
    def _apply(self, m, add):
        self.mask = (self.mask | m) if add else m
        return int(self.mask.sum())

    def selectPolygon(self, vertices, add=False):
        """Every item inside the polygon (drawn or placed by its neighbours)."""
        return self._apply(sel.in_polygon(self.xy, vertices), add)

    def selectBox(self, corner1, corner2, add=False):
        return self._apply(sel.in_box(self.xy, corner1, corner2), add)

    def selectClasses(self, classIds, add=False):
        """Every member of these classes, including those not drawn on the map."""
        return self._apply(sel.in_classes(self.classes, classIds), add)

    def clear(self):
        self.mask[:] = False

    def pick(self, point):
        """Row index of the drawn item nearest ``point`` on the map."""
        return sel.nearest(self.xy, point, among=self.map.drawn)

    def describeSelection(self):
        n = int(self.mask.sum())
        if not n:
            return 'nothing selected'
        touched = sorted(set(self.classes[self.mask].tolist()))
        return '%d of %d selected, from class%s %s' % (
            n, self.n, 'es' if len(touched) > 1 else '', ', '.join(map(str, touched[:12])) +
            (' ...' if len(touched) > 12 else ''))

    def centralSlices(self, row):
        """The XY, XZ and YZ central slices of item ``row`` (2-D arrays)."""
        import mrcfile
        index, fn = self.locations[row]
        with mrcfile.mmap(fn.split(':')[0], mode='r', permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
        if data.ndim == 4:
            data = data[(index or 1) - 1]
        z, y, x = (s // 2 for s in data.shape)
        return data[z], data[:, y, :], data[:, :, x]

    # ------------------------------------------------------------------ results
    def newLabels(self, mode):
        return sel.new_labels(self.classes if self.hasClasses else np.ones(self.n, np.int64),
                              self.mask, mode)

    def writeSelection(self, mode):
        """The selection file (file,label,id) of ``mode`` in the run's extra/selections."""
        labels = self.newLabels(mode)
        folder = self.protocol._getExtraPath('selections')
        os.makedirs(folder, exist_ok=True)
        fn = os.path.join(folder, 'selection_%s_%s.csv' % (time.strftime('%Y%m%d_%H%M%S'), mode))
        i = 1
        while os.path.exists(fn):
            fn = fn[:-4] + '_%d.csv' % i
            i += 1
        sel.write_selection_csv(fn, self.files, labels, ids=self.ids)
        return os.path.abspath(fn), labels

    def register(self, mode='subset', project=None, wait=False):
        """Turn the selection into a new "deepcluster - import selection" run of the
        project, as Scipion's own subset viewers do (a new protocol, launched): a
        SetOfSubTomograms for 'subset', new classes for 'split' and 'merge'.
        Returns the new protocol (finished when ``wait``)."""
        from deepcluster.protocols.protocol_select import (OUT_CLASSES, OUT_SUBSET,
                                                           ProtDeepClusterSelect)
        fn, labels = self.writeSelection(mode)
        project = project or self.protocol.getProject()
        prot = project.newProtocol(ProtDeepClusterSelect,
                                   outputType=OUT_SUBSET if mode == 'subset' else OUT_CLASSES)
        prot.inputSubtomograms.set(self.itemsPointer.getObjValue())
        if self.itemsPointer.hasExtended():
            prot.inputSubtomograms.setExtended(self.itemsPointer.getExtended())
        prot.selectionFile.set(fn)
        nClasses = len(set(labels[labels > 0].tolist()))
        prot.setObjLabel('map selection: %s (%d items%s)' % (
            MODE_LABELS[mode], int((labels > 0).sum()),
            '' if mode == 'subset' else ', %d classes' % nClasses))
        project.launchProtocol(prot, wait=wait)
        return prot
