"""deepcluster - train: a shape encoder from synthetic (or any labelled) data."""
import csv
import os
from enum import Enum

import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params

from ..constants import LABEL_ATTR
from ..objects import DeepClusterModel
from .protocol_base import VAL_ACC_ATTR, ProtDeepClusterBase, near_chance

FROM_SUBTOMOS, FROM_STRUCTURES = 0, 1
ARCHS = ['fast', 'deepfinder']


class TrainOutputs(Enum):
    model = DeepClusterModel


class ProtDeepClusterTrain(ProtDeepClusterBase):
    """Train the 3D CNN encoder by classifying labelled subtomograms (paper
    section 3): either a labelled set (e.g. from "deepcluster - simulate") or
    structures from which fresh synthetic subtomograms are simulated at every
    step. The classification layer is then dropped; the 32-d penultimate layer
    is the shape feature used by "embed"."""
    _label = 'train'
    _possibleOutputs = TrainOutputs

    def _defineParams(self, form):
        form.addSection(label='Training data')
        form.addParam('inputType', params.EnumParam, default=FROM_STRUCTURES,
                      choices=['labelled subtomograms', 'structures (simulate on the fly)'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Train from',
                      help='structures (default): density maps, atomic models and/or procedural '
                           'shapes; fresh synthetic subtomograms are simulated at every step, so '
                           'the model never sees the same one twice. labelled subtomograms: a set '
                           'whose items carry a class label (e.g. "deepcluster - simulate").')
        form.addParam('inputSubtomograms', params.PointerParam, pointerClass='SetOfSubTomograms',
                      condition='inputType==%d' % FROM_SUBTOMOS, allowsNull=True,
                      label='Labelled subtomograms',
                      help='Items must carry a class label, e.g. the output of "deepcluster - simulate".')
        self._defineStructureParams(form, condition='inputType==%d' % FROM_STRUCTURES)
        form.addParam('samplingRate', params.FloatParam, default=10.0,
                      condition='inputType==%d' % FROM_STRUCTURES, label='Voxel size (Å)',
                      help='Sampling of the simulated training subtomograms in Å per voxel '
                           '(default 10, as the shipped models). Data to embed later are resampled '
                           'to it, whatever their own voxel size.')
        form.addParam('boxSize', params.IntParam, default=40,
                      condition='inputType==%d' % FROM_STRUCTURES, label='Box size (voxels)',
                      help='Edge of the training subtomograms in voxels (default 40: 400 Å at '
                           '10 Å/voxel). It should hold the largest particle with some margin.')
        form.addSection(label='Training')
        form.addParam('arch', params.EnumParam, choices=ARCHS, default=0, label='Architecture',
                      help='fast: this plugin\'s default encoder (>50x faster on a CPU); '
                           'deepfinder: the encoder of the paper (DeepFinder).')
        form.addParam('steps', params.IntParam, default=3000, validators=[params.GE(1)],
                      label='Training steps',
                      help='Optimiser steps of one batch each (default 3000). Time: about 0.25 s '
                           'per step at batch 64 on a CPU (5,000-8,000-step runs took 21-35 min, '
                           'docs/experiments.rst), so the default takes ~13 min on a CPU and a '
                           'few minutes on a GPU. A few hundred steps give a model near chance '
                           'level, useful only to test a setup; the shipped models had 17,000-19,000 '
                           'steps on a GPU.')
        form.addParam('batchSize', params.IntParam, default=64, validators=[params.GE(2)],
                      label='Batch size',
                      help='Subtomograms per step, balanced over the classes (default 64, at '
                           'least 2). Time per step grows about in proportion.')
        form.addParam('learningRate', params.FloatParam, default=1e-4,
                      expertLevel=params.LEVEL_ADVANCED, label='Learning rate (Adam)',
                      help='Peak learning rate of the Adam optimiser (default 0.0001); it anneals '
                           'over the run (see the learning-rate curve of the viewer).')
        form.addParam('seed', params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label='Random seed',
                      help='Seeds the weights and the simulated data (default 0): same seed and '
                           'inputs, same model on the same machine.')
        form.addParam('maxMinutes', params.FloatParam, default=0, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label='Time limit (min)',
                      help='Stop after this much training time and write the model (0: no limit), '
                           'e.g. to fit a queue\'s wall-time limit. The learning rate then anneals '
                           'by time, so the model is complete, only trained on fewer steps.')
        self._defineGpuParams(form)

    # ------------------------------------------------------------------ steps
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.trainStep)
        self._insertFunctionStep(self.createOutputStep)

    def _modelFn(self):
        return self._getExtraPath('model.pt')

    def _workDir(self):
        return self._getExtraPath('training')

    def convertInputStep(self):
        if self.inputType.get() == FROM_SUBTOMOS:
            subtomos = self.inputSubtomograms.get()
            ids, paths = self.writeSubtomogramList(subtomos, self._getTmpPath('subtomograms.txt'))
            self.writeTruthCsv(subtomos, paths, self._labelsFn())
        else:
            self.exportStructures()

    def _labelsFn(self):
        return self._getExtraPath('labels.csv')

    def trainStep(self):
        args = ['--out', self._modelFn(), '--work-dir', self._workDir(),
                '--arch', ARCHS[self.arch.get()], '--steps', self.steps.get(),
                '--batch-size', self.batchSize.get(), '--lr', self.learningRate.get(),
                '--seed', self.seed.get(), '--resume']
        if self.maxMinutes.get() > 0:
            args += ['--max-minutes', self.maxMinutes.get()]
        if self.inputType.get() == FROM_SUBTOMOS:
            args += ['--data', self._labelsFn(),
                     '--data-voxel-size', self.inputSubtomograms.get().getSamplingRate()]
        else:
            args += ['--voxel-size', self.samplingRate.get(), '--box', self.boxSize.get()]
            args += self.structureArgs()
        self.runDeepCluster('train', args + self._deviceArgs())

    def createOutputStep(self):
        from deepcluster.core.model.network import read_model_file
        model = DeepClusterModel(filename=self._modelFn())
        config = read_model_file(self._modelFn())[1]
        model.setFromConfig(config)
        valAcc = (config.get('metrics') or {}).get('val_acc')
        if valAcc is not None:     # read by the embed/classify forms' chance-level warning
            setattr(model, VAL_ACC_ATTR, pwobj.Float(valAcc))
        self._defineOutputs(**{TrainOutputs.model.name: model})
        src = self.inputSubtomograms if self.inputType.get() == FROM_SUBTOMOS else self.inputVolumes
        if src.hasValue():
            self._defineSourceRelation(src, model)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        if self.inputType.get() == FROM_SUBTOMOS:
            subtomos = self.inputSubtomograms.get()
            if subtomos is None:
                errors.append('Choose a labelled set of subtomograms.')
            elif not self.hasTruth(subtomos):
                errors.append('The subtomograms carry no class label (%s): use the output of '
                              '"deepcluster - simulate" or train from structures.' % LABEL_ATTR)
        elif not self._hasStructures():
            errors.append('Give density maps, structure files, or a number of procedural classes.')
        return errors

    def _summary(self):
        if not hasattr(self, TrainOutputs.model.name):
            return ['Training not finished yet.']
        model = getattr(self, TrainOutputs.model.name)
        lines = ['Model: %s' % model, 'Classes: %s' % ', '.join(model.getClassNames())]
        last = self._lastLogRow()
        if last.get('val_acc'):
            lines.append('Final validation accuracy: %.3f (step %s)' % (float(last['val_acc']), last['step']))
        acc, n = self.modelQuality(model)
        if near_chance(acc, n):
            lines.append('WARNING: near chance level (best validation accuracy %.2f for %d classes, '
                         'chance %.2f): train longer before using this model.' % (acc, n, 1.0 / n))
        if last and self.maxMinutes.get() > 0 and int(last['step']) < self.steps.get():
            lines.append('Time limit of %g min reached after %s of %d steps.'
                         % (self.maxMinutes.get(), last['step'], self.steps.get()))
        return lines

    def _lastLogRow(self):
        """The training log's last row: the final step ({} before there is one)."""
        log = os.path.join(self._workDir(), 'train_log.csv')
        rows = list(csv.DictReader(open(log))) if os.path.exists(log) else []
        return rows[-1] if rows else {}

    def _methods(self):
        return ['A %s 3D CNN encoder was trained for %d steps (batch %d, Adam, lr %g, class-balanced '
                'batches) to classify synthetic subtomograms, as in [Moebel2022]; its 32-d '
                'penultimate layer serves as the shape feature.'
                % (ARCHS[self.arch.get()], int(self._lastLogRow().get('step') or self.steps.get()),
                   self.batchSize.get(), self.learningRate.get())]
