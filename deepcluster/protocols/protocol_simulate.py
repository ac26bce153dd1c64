"""deepcluster - simulate: labelled synthetic subtomograms from known structures."""
import csv
import glob
import os
from enum import Enum

import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from pwem.objects import SetOfVolumes, Transform, Volume
from tomo.constants import BOTTOM_LEFT_CORNER
from tomo.objects import (Coordinate3D, SetOfCoordinates3D, SetOfSubTomograms, SetOfTomograms,
                          SubTomogram, Tomogram, TomoAcquisition)

from ..constants import LABEL_ATTR
from .protocol_base import ProtDeepClusterBase


class SimulateOutputs(Enum):
    subtomograms = SetOfSubTomograms
    templates = SetOfVolumes
    tomograms = SetOfTomograms
    coordinates = SetOfCoordinates3D


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
        line = form.addLine('Tomograms',
                            help='The particles are also placed in synthetic tomograms (their boxes '
                                 'side by side in a slab, binned), so the output is what an '
                                 'extraction registers: tomograms, 3D coordinates with their tomogram '
                                 'id, and subtomograms with coordinate, tomogram name and true pose '
                                 '(transform), ready for averaging protocols.')
        line.addParam('perTomogram', params.IntParam, default=200, validators=[params.GE(1)],
                      label='particles each')
        line.addParam('tomoBinning', params.IntParam, default=2, validators=[params.GE(1)],
                      label='binning')
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
                '--seed', self.seed.get(),
                '--tomograms', self.perTomogram.get(), self.tomoBinning.get()]
        args += self.structureArgs()
        if not self.negative.get():
            args += ['--no-negative']
        if self.snrMin.get() > 0 and self.snrMax.get() > 0:
            args += ['--snr', self.snrMin.get(), self.snrMax.get()]
        self.runDeepCluster('simulate', args + self._deviceArgs())

    def createOutputStep(self):
        from deepcluster.core.datamodel.tomograms import read_particles
        outDir = self._outDir()
        sr, box, binning = self.samplingRate.get(), self.boxSize.get(), self.tomoBinning.get()
        acq = self._acquisition()
        particles = read_particles(os.path.join(outDir, 'particles.csv'))
        # tomograms, in name order (tomo_000...)
        tomograms = self._createSetOfTomograms()
        tomograms.setSamplingRate(sr * binning)
        tomograms.setAcquisition(acq)
        tomoOf, offsets = {}, {}
        for fn in sorted(glob.glob(os.path.join(outDir, 'tomograms', '*.mrc'))):
            tomo = Tomogram(location=fn)
            tsId = os.path.splitext(os.path.basename(fn))[0]
            tomo.setTsId(tsId)
            tomo.setSamplingRate(sr * binning)
            tomo.setAcquisition(acq.clone())
            tomo.setOrigin()                         # the centre: Scipion's default
            tomograms.append(tomo)
            tomoOf[tsId] = tomo.clone()
            probe = Coordinate3D()
            probe.setVolume(tomoOf[tsId])
            offsets[tsId] = [probe._getOffset(d, BOTTOM_LEFT_CORNER) for d in range(3)]
        tomograms.write()
        coords = self._createSetOfCoordinates3D(tomograms)
        coords.setSamplingRate(sr * binning)
        coords.setBoxSize(box // binning)
        subtomos = self._createSetOfSubTomograms()
        subtomos.setSamplingRate(sr)
        subtomos.setAcquisition(acq)
        with open(os.path.join(outDir, 'labels.csv'), newline='') as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            part = particles[row['file']]
            tsId, (x, y, z) = part['tomogram'], part['xyz']
            tomo, off = tomoOf[tsId], offsets[tsId]
            coord = Coordinate3D()
            coord.setVolume(tomo)
            coord.setTomoId(tsId)
            coord._x.set(x + off[0])                 # = setX(x, BOTTOM_LEFT_CORNER), without
            coord._y.set(y + off[1])                 # reading the tomogram's header each time
            coord._z.set(z + off[2])
            coord.setMatrix(part['matrix'])
            coord.setBoxSize(box // binning)
            coords.append(coord)
            st = SubTomogram()
            st.setLocation(os.path.join(outDir, row['file']))
            st.setSamplingRate(sr)
            st.setAcquisition(acq)
            st.setCoordinate3D(coord)
            st.setVolId(tomo.getObjId())
            st.setVolName(tsId)                      # tomo's iterSubtomos(volume) matches volName to tsId
            st.setTransform(Transform(part['matrix']))
            setattr(st, LABEL_ATTR, pwobj.String(row['label']))
            subtomos.append(st)
        subtomos.setCoordinates3D(coords)
        templates = self._createSetOfVolumes()
        templates.setSamplingRate(sr)
        for fn in sorted(glob.glob(os.path.join(outDir, 'templates', '*.mrc'))):
            vol = Volume(location=fn)
            vol.setSamplingRate(sr)
            vol.setObjLabel(os.path.splitext(os.path.basename(fn))[0])
            templates.append(vol)
        self._defineOutputs(**{SimulateOutputs.tomograms.name: tomograms,
                               SimulateOutputs.coordinates.name: coords,
                               SimulateOutputs.subtomograms.name: subtomos,
                               SimulateOutputs.templates.name: templates})
        if self.inputVolumes.hasValue():
            self._defineSourceRelation(self.inputVolumes, subtomos)
        self._defineSourceRelation(tomograms, coords)
        self._defineSourceRelation(coords, subtomos)

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
        if not 1 <= self.tomoBinning.get() <= self.boxSize.get() // 4:
            errors.append('Tomogram binning must be within 1 and box size / 4 (%d).'
                          % (self.boxSize.get() // 4))
        return errors

    def _summary(self):
        if not self.isFinished() or not hasattr(self, SimulateOutputs.subtomograms.name):
            return ['Simulation not finished yet.']
        subtomos = getattr(self, SimulateOutputs.subtomograms.name)
        labels = sorted({getattr(st, LABEL_ATTR).get() for st in subtomos})
        lines = ['%d subtomograms, %d classes (%s), box %d px at %.2f A/px, tilt %g..%g deg.'
                 % (subtomos.getSize(), len(labels), ', '.join(labels), self.boxSize.get(),
                    self.samplingRate.get(), self.tiltMin.get(), self.tiltMax.get())]
        tomos = getattr(self, SimulateOutputs.tomograms.name, None)
        if tomos is not None:
            lines.append('Placed in %d synthetic tomograms (binned %dx, %.2f A/px) with their 3D '
                         'coordinates; each subtomogram carries its true pose as its transform.'
                         % (tomos.getSize(), self.tomoBinning.get(), tomos.getSamplingRate()))
        return lines

    def _methods(self):
        return ['%d synthetic subtomograms per class (box %d px, %.2f A/px) were simulated with '
                'deepcluster [Moebel2022]: uniformly random orientations, crowding, membranes, '
                'a missing wedge for a %g..%g deg tilt range, CTF, dose weighting and noise.'
                % (self.nPerClass.get(), self.boxSize.get(), self.samplingRate.get(),
                   self.tiltMin.get(), self.tiltMax.get())]
