"""deepcluster - import selection: a selection made on the 2-D map (in the
interactive viewer, or headless with ``deepcluster select``) as a new
SetOfSubTomograms or new classes of the project."""
import os
import shutil
from enum import Enum

import numpy as np
import pyworkflow.protocol.params as params
from tomo.objects import SetOfClassesSubTomograms, SetOfSubTomograms

from ..constants import FEATURE_ATTR
from .protocol_base import ProtDeepClusterBase

OUT_SUBSET, OUT_CLASSES = 0, 1


class SelectOutputs(Enum):
    subtomograms = SetOfSubTomograms
    classes = SetOfClassesSubTomograms


class ProtDeepClusterSelect(ProtDeepClusterBase):
    """Turn a selection file (file,label[,id] rows, as written by the interactive
    map viewer or by "python -m deepcluster select") into a subset of the
    subtomograms or into new classes (label = class id). The map viewer of
    "cluster" and "classify" runs this protocol for you."""
    _label = 'import selection'
    _possibleOutputs = SelectOutputs

    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputSubtomograms', params.PointerParam, pointerClass='SetOfSubTomograms',
                      important=True, label='Subtomograms',
                      help='The set the selection was made on: the output of "deepcluster - '
                           'embed" or "classify" (the items that cluster classified).')
        form.addParam('selectionFile', params.FileParam, important=True, label='Selection file',
                      help='CSV with columns file,label and optionally id (the item id, which '
                           'wins over the file name): written by the map viewer or by '
                           '"python -m deepcluster select MAP.csv ... --out selection.csv". '
                           'Rows match items by id, else by file path, else by file name.')
        form.addParam('outputType', params.EnumParam, default=OUT_SUBSET,
                      choices=['subtomograms (subset)', 'classes'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Output',
                      help='subtomograms: the listed items as a new set (default). classes: a new '
                           'set of classes, one per label; each representative is the member '
                           'nearest its class centre in feature space.')

    def _insertAllSteps(self):
        self._insertFunctionStep(self.createOutputStep)

    def _selectionCopy(self):
        return self._getExtraPath('selection.csv')

    # ------------------------------------------------------------------ steps
    def matchSelection(self):
        """{item id: label} of the selection file's rows (a one-line error when a
        row names no item or several)."""
        from deepcluster.core.analysis.selection import read_selection_csv
        files, labels, ids = read_selection_csv(self.selectionFile.get())
        items = [(item.getObjId(), item.getFileName()) for item in
                 self.inputSubtomograms.get().iterItems(orderBy='id')]
        known = {i for i, _ in items}
        if ids is not None:
            bad = [i for i in ids if i not in known]
            if bad:
                raise ValueError('%s: item id %d is not in the input set'
                                 % (self.selectionFile.get(), bad[0]))
            return dict(zip(ids, labels.tolist()))
        byPath, byName = {}, {}
        for objId, fn in items:
            byPath.setdefault(os.path.abspath(fn), []).append(objId)
            byName.setdefault(os.path.basename(fn), []).append(objId)
        out = {}
        for fn, lab in zip(files, labels.tolist()):
            hits = byPath.get(os.path.abspath(fn)) or byName.get(os.path.basename(fn)) or []
            if len(hits) != 1:
                raise ValueError('%s: %s matches %s items of the input set%s'
                                 % (self.selectionFile.get(), fn, len(hits) or 'no',
                                    '; add an id column' if hits else ''))
            out[hits[0]] = lab
        return out

    def createOutputStep(self):
        shutil.copy(self.selectionFile.get(), self._selectionCopy())
        labelOf = self.matchSelection()
        inputSet = self.inputSubtomograms.get()
        if self.outputType.get() == OUT_SUBSET:
            out = self._createSetOfSubTomograms()
            out.copyInfo(inputSet)
            for item in inputSet.iterItems(orderBy='id'):
                if item.getObjId() in labelOf:
                    out.append(item.clone())
            self._defineOutputs(**{SelectOutputs.subtomograms.name: out})
            self._defineSourceRelation(self.inputSubtomograms, out)
            return
        reps = self._representatives(inputSet, labelOf)

        def updateItem(item, row=None):
            item.setClassId(labelOf.get(item.getObjId(), 0))

        def updateClass(cls, *args):
            rep = cls.getRepresentative()
            rep.setLocation(reps[cls.getObjId()])
            rep.setSamplingRate(inputSet.getSamplingRate())

        classes = self._createSetOfClassesSubTomograms(self.inputSubtomograms)
        classes.classifyItems(updateItemCallback=updateItem, updateClassCallback=updateClass)
        self._defineOutputs(**{SelectOutputs.classes.name: classes})
        self._defineSourceRelation(self.inputSubtomograms, classes)

    @staticmethod
    def _representatives(inputSet, labelOf):
        """{class id: location of the member nearest the class's mean feature}
        (the first member when the items carry no features)."""
        members = {}
        for item in inputSet.iterItems(orderBy='id'):
            lab = labelOf.get(item.getObjId())
            if not lab:
                continue
            value = getattr(item, FEATURE_ATTR, None)
            vec = np.array(value.get().split(','), np.float32) if value is not None and value.get() \
                else None
            members.setdefault(lab, []).append((item.getLocation(), vec))
        reps = {}
        for lab, rows in members.items():
            if any(v is None for _, v in rows):
                reps[lab] = rows[0][0]
                continue
            V = np.vstack([v for _, v in rows])
            d = ((V - V.mean(0)) ** 2).sum(1)
            reps[lab] = rows[int(np.argmin(d))][0]
        return reps

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        fn = self.selectionFile.get()
        if fn and not os.path.isfile(fn):
            errors.append('Selection file %s does not exist.' % fn)
        elif fn:
            from deepcluster.core import DeepClusterError
            from deepcluster.core.analysis.selection import read_selection_csv
            try:
                read_selection_csv(fn)
            except DeepClusterError as e:
                errors.append(str(e))
        return errors

    def _summary(self):
        for name in (SelectOutputs.subtomograms.name, SelectOutputs.classes.name):
            if hasattr(self, name):
                out = getattr(self, name)
                if name == SelectOutputs.classes.name:
                    return ['%d classes from the selection %s: %s'
                            % (out.getSize(), self._selectionCopy(),
                               ', '.join('class %d: %d' % (c.getObjId(), c.getSize())
                                         for c in out.iterItems(orderBy='id')))]
                return ['%d of %d subtomograms selected (%s).'
                        % (out.getSize(), self.inputSubtomograms.get().getSize(),
                           self._selectionCopy())]
        return ['Not run yet.']

    def _methods(self):
        return ['Subtomograms were selected on a 2-D map (t-SNE/UMAP) of their deepcluster '
                'shape features.']
