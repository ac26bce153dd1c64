"""deepcluster - simulate: labelled synthetic subtomograms from known structures."""
import csv
import glob
import os
from enum import Enum

import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from pwem.objects import SetOfVolumes, Volume
from tomo.objects import SetOfSubTomograms, SubTomogram, TomoAcquisition

from ..constants import LABEL_ATTR
from .protocol_base import ProtDeepClusterBase


class SimulateOutputs(Enum):
    subtomograms = SetOfSubTomograms
    templates = SetOfVolumes


class ProtDeepClusterSimulate(ProtDeepClusterBase):
    """Simulate labelled subtomograms (rotation, crowding, membranes, gold beads,
    missing wedge, CTF, dose and noise) from density maps, atomic models and/or
    procedural pseudo-molecules. The output set is ready to train a deepcluster
    model, or to test a classification where the truth is known."""
    _label = 'simulate'
    _possibleOutputs = SimulateOutputs

    def _defineParams(self, form):
        form.addSection(label='Structures')
        self._defineStructureParams(form)
        form.addParam('negative', params.BooleanParam, default=True,
                      label='Add a negative class?',
                      help='Subtomograms with no particle at the centre (neighbours, '
                           'membranes and noise only).')
        form.addSection(label='Simulation')
        form.addParam('nPerClass', params.IntParam, default=50, validators=[params.GE(1)],
                      label='Subtomograms per class',
                      help='How many subtomograms each class gets (default 50); the negative '
                           'class, if asked for, gets as many.')
        form.addParam('boxSize', params.IntParam, default=40, validators=[params.GE(16)],
                      label='Box size (voxels)',
                      help='Edge of each cubic subtomogram in voxels (default 40: 400 Å at 10 '
                           'Å/voxel, the shipped model\'s box). At least 16.')
        form.addParam('samplingRate', params.FloatParam, default=10.0,
                      validators=[params.GT(0)], label='Voxel size (Å)',
                      help='Sampling of the subtomograms in Å per voxel (default 10, the shipped '
                           'model\'s). Structures are resampled to it.')
        line = form.addLine('Tilt range (deg)',
                            help='Tilt range of the simulated tilt series in degrees (default -60 '
                                 'to 60); it sets the missing wedge and is stored as the '
                                 'acquisition.')
        line.addParam('tiltMin', params.FloatParam, default=-60, label='min')
        line.addParam('tiltMax', params.FloatParam, default=60, label='max')
        line = form.addLine('SNR range', help='Signal-to-noise ratio (local, of the particle), '
                                              'drawn log-uniformly per subtomogram. 0 in either '
                                              'field: the default range 0.1 to 1.5 (that of '
                                              'the shipped model\'s training data).')
        line.addParam('snrMin', params.FloatParam, default=0.0, label='min (0: 0.1)')
        line.addParam('snrMax', params.FloatParam, default=0.0, label='max (0: 1.5)')
        form.addParam('seed', params.IntParam, default=0, label='Random seed',
                      help='Same seed, same inputs: identical subtomograms (default 0). Change '
                           'it for a new, independent sample.')
        self._defineGpuParams(form)

    # ------------------------------------------------------------------ steps
    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.simulateStep)
        self._insertFunctionStep(self.createOutputStep)

    def _outDir(self):
        return self._getExtraPath('simulated')

    def convertInputStep(self):
        self.exportStructures()

    def simulateStep(self):
        args = ['--out', self._outDir(), '--n-per-class', self.nPerClass.get(),
                '--box', self.boxSize.get(), '--voxel-size', self.samplingRate.get(),
                '--tilt-range', self.tiltMin.get(), self.tiltMax.get(),
                '--seed', self.seed.get()]
        args += self.structureArgs()
        if not self.negative.get():
            args += ['--no-negative']
        if self.snrMin.get() > 0 and self.snrMax.get() > 0:
            args += ['--snr', self.snrMin.get(), self.snrMax.get()]
        self.runDeepCluster('simulate', args + self._deviceArgs())

    def createOutputStep(self):
        outDir = self._outDir()
        acq = self._acquisition()
        subtomos = self._createSetOfSubTomograms()
        subtomos.setSamplingRate(self.samplingRate.get())
        subtomos.setAcquisition(acq)
        with open(os.path.join(outDir, 'labels.csv'), newline='') as f:
            for row in csv.DictReader(f):
                st = SubTomogram()
                st.setLocation(os.path.join(outDir, row['file']))
                st.setSamplingRate(self.samplingRate.get())
                st.setAcquisition(acq.clone())
                setattr(st, LABEL_ATTR, pwobj.String(row['label']))
                subtomos.append(st)
        templates = self._createSetOfVolumes()
        templates.setSamplingRate(self.samplingRate.get())
        for fn in sorted(glob.glob(os.path.join(outDir, 'templates', '*.mrc'))):
            vol = Volume(location=fn)
            vol.setSamplingRate(self.samplingRate.get())
            vol.setObjLabel(os.path.splitext(os.path.basename(fn))[0])
            templates.append(vol)
        self._defineOutputs(**{SimulateOutputs.subtomograms.name: subtomos,
                               SimulateOutputs.templates.name: templates})
        if self.inputVolumes.hasValue():
            self._defineSourceRelation(self.inputVolumes, subtomos)

    # ------------------------------------------------------------------ helpers
    def _acquisition(self):
        acq = TomoAcquisition(angleMin=self.tiltMin.get(), angleMax=self.tiltMax.get(),
                              step=3.0, tiltAxisAngle=0.0)
        acq.setVoltage(300.0)
        acq.setSphericalAberration(2.7)
        acq.setAmplitudeContrast(0.07)
        return acq

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        if not self._hasStructures():
            errors.append('Give density maps, structure files, or a number of procedural classes.')
        for p in (self.structuresPath.get() or '').split():
            if not os.path.exists(p):
                errors.append('Structure path %s does not exist.' % p)
        if not -90 <= self.tiltMin.get() < self.tiltMax.get() <= 90:
            errors.append('Tilt range must satisfy -90 <= min < max <= 90.')
        if (self.snrMin.get() > 0) != (self.snrMax.get() > 0) or self.snrMin.get() > self.snrMax.get():
            errors.append('SNR range: give both min and max (min <= max), or leave both 0.')
        return errors

    def _summary(self):
        if not self.isFinished() or not hasattr(self, SimulateOutputs.subtomograms.name):
            return ['Simulation not finished yet.']
        subtomos = getattr(self, SimulateOutputs.subtomograms.name)
        labels = sorted({getattr(st, LABEL_ATTR).get() for st in subtomos})
        return ['%d subtomograms, %d classes (%s), box %d px at %.2f A/px, tilt %g..%g deg.'
                % (subtomos.getSize(), len(labels), ', '.join(labels), self.boxSize.get(),
                   self.samplingRate.get(), self.tiltMin.get(), self.tiltMax.get())]

    def _methods(self):
        return ['%d synthetic subtomograms per class (box %d px, %.2f A/px) were simulated with '
                'deepcluster [Moebel2022]: uniformly random orientations, crowding, membranes, '
                'a missing wedge for a %g..%g deg tilt range, CTF, dose weighting and noise.'
                % (self.nPerClass.get(), self.boxSize.get(), self.samplingRate.get(),
                   self.tiltMin.get(), self.tiltMax.get())]
