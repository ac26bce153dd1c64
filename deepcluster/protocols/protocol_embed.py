"""deepcluster - embed: a shape feature vector for every subtomogram."""
import os
from enum import Enum

import numpy as np
import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from tomo.objects import SetOfSubTomograms

from ..constants import FEATURE_ATTR, FEATURE_INDEX_ATTR, PRECISIONS
from ..objects import DeepClusterModel
from .protocol_base import ProtDeepClusterBase, featureString

CONTRASTS = ('auto', 'dark', 'bright')
ADAPT_MODES = ('none', 'bn', 'full')     # embed --adapt (core/inference/adapt.py)
ADAPT_DEFAULT = 1                        # bn: the best measured (benchmarks/results/bench_adapt.json)


class EmbedOutputs(Enum):
    subtomograms = SetOfSubTomograms
    adaptedModel = DeepClusterModel


class ProtDeepClusterEmbed(ProtDeepClusterBase):
    """Map each subtomogram to a 32-d feature with a trained encoder (no alignment:
    the features are learned to be orientation invariant). Subtomograms at any
    voxel size are resampled to the model's voxel size and box."""
    _label = 'embed'
    _possibleOutputs = EmbedOutputs

    def _defineParams(self, form):
        form.addSection(label='Input')
        self._defineSubtomogramsParam(form)
        self._defineModelParam(form)
        self._defineEmbedParams(form)
        self._defineGpuParams(form)

    @staticmethod
    def _defineEmbedParams(form):
        form.addParam('adapt', params.EnumParam, choices=list(ADAPT_MODES), default=ADAPT_DEFAULT,
                      display=params.EnumParam.DISPLAY_HLIST, label='Adapt to these data',
                      help='Adapt the model to these (unlabelled) subtomograms before embedding. '
                           'bn (default): re-estimate the network\'s BatchNorm statistics on this '
                           'set (deterministic, a few passes over the data); the best mode measured '
                           'on independent realistic test sets (benchmarks/results/bench_adapt.json). '
                           'full: bn, then minutes of fine-tuning on these data anchored by the '
                           'synthetic training task (measured below bn: +0.018 V vs +0.031 over six '
                           'realistic sets, and -0.07 on simulated data). none: the model as it is. '
                           'The adapted model '
                           'is registered as an output (reuse it on more data of the same kind). '
                           'Sets under 100 subtomograms, or adaptations that leave the features '
                           'less separable, keep the un-adapted model (said in the summary).')
        form.addParam('adaptMinutes', params.FloatParam, default=5.0, validators=[params.GT(0)],
                      condition='adapt == 2', expertLevel=params.LEVEL_ADVANCED,
                      label='Adaptation time budget (min)',
                      help='Upper limit of the fine-tuning time of "full"; fewer steps are run '
                           'when the machine is too slow (logged).')
        form.addParam('adaptForce', params.BooleanParam, default=False, condition='adapt != 0',
                      expertLevel=params.LEVEL_ADVANCED, label='Keep the adaptation whatever the guard says',
                      help='By default an adaptation that leaves the features clearly less separable '
                           '(k-means silhouette down by more than 0.05) is refused and the un-adapted '
                           'model is used. Yes: keep the adapted model anyway.')
        form.addParam('contrast', params.EnumParam, choices=list(CONTRASTS), default=0,
                      display=params.EnumParam.DISPLAY_HLIST, expertLevel=params.LEVEL_ADVANCED,
                      label='Protein contrast',
                      help='dark: protein darker than the background (raw reconstructions); '
                           'bright: the other way; auto: told from the data (skewness of the '
                           'intensities, logged). The model expects dark protein: bright data '
                           'are inverted.')
        form.addParam('batchSize', params.IntParam, default=64, validators=[params.GE(1)],
                      expertLevel=params.LEVEL_ADVANCED, label='Batch size',
                      help='Subtomograms per network pass (default 64). Larger is a little '
                           'faster on a GPU; lower it if the GPU runs out of memory. The features '
                           'do not depend on it.')
        form.addParam('precision', params.EnumParam, choices=PRECISIONS, default=0,
                      display=params.EnumParam.DISPLAY_HLIST, expertLevel=params.LEVEL_ADVANCED,
                      label='Precision',
                      help='Arithmetic of the network. auto: bf16 on CPUs with bfloat16 '
                           'instructions (AVX512-BF16 or AMX), where it is ~1.6x faster and the '
                           'features cluster as in fp32; fp32 everywhere else.')

    # ------------------------------------------------------------------ steps
    def _insertAllSteps(self):
        self._insertEmbedSteps()
        self._insertFunctionStep(self.createOutputStep)

    def _insertEmbedSteps(self):
        self._insertFunctionStep(self.convertInputStep)
        self._insertFunctionStep(self.embedStep)

    def _featuresFn(self):
        return self._getExtraPath('features.npy')

    def convertInputStep(self):
        self.writeSubtomogramList(self.inputSubtomograms.get(), self._getExtraPath('subtomograms.txt'))

    def embedStep(self):
        args = [self._getExtraPath('subtomograms.txt'), '--out', self._featuresFn(),
                '--voxel-size', self.inputSubtomograms.get().getSamplingRate(),
                '--batch-size', self.batchSize.get()]
        args += ['--contrast', CONTRASTS[self.contrast.get()], '--precision', PRECISIONS[self.precision.get()]]
        args += self._adaptArgs()
        self.runDeepCluster('embed', args + self._modelArgs() + self._deviceArgs())

    def _adaptArgs(self):
        mode = ADAPT_MODES[self.adapt.get()] if self.hasAttribute('adapt') else 'none'
        args = ['--adapt', mode]
        if mode == 'full':
            args += ['--adapt-minutes', self.adaptMinutes.get()]
        if mode != 'none' and self.hasAttribute('adaptForce') and self.adaptForce.get():
            args += ['--adapt-force']
        return args

    def _adaptedModelFn(self):
        return self._getExtraPath('features_adapted.pt')

    def _adaptReport(self):
        """The embed CLI's adaptation report (dict), or None."""
        import json
        fn = self._getExtraPath('features_adapt.json')
        if not os.path.isfile(fn):
            return None
        with open(fn) as f:
            return json.load(f)

    def _defineAdaptedModel(self):
        """Register the adapted model (if the adaptation was kept) as an output."""
        if not os.path.isfile(self._adaptedModelFn()):
            return
        from deepcluster.core.model.network import read_model_file
        model = DeepClusterModel(filename=self._adaptedModelFn())
        model.setFromConfig(read_model_file(self._adaptedModelFn())[1])
        self._defineOutputs(**{EmbedOutputs.adaptedModel.name: model})
        self._defineSourceRelation(self.inputSubtomograms, model)

    def _adaptSummary(self):
        rep = self._adaptReport()
        if not rep:
            return []
        if rep.get('accepted'):
            return ['Model adapted to these data (%s, %d subtomograms, %s s): output %s.'
                    % (rep.get('mode'), rep.get('n', 0), rep.get('seconds'), EmbedOutputs.adaptedModel.name)]
        return ['Adaptation (%s) not kept: %s.' % (rep.get('mode'), rep.get('reason'))]

    def _embeddedSet(self):
        """The input set with the features attached to every item (set order)."""
        inputSet = self.inputSubtomograms.get()
        features = np.load(self._featuresFn())
        out = self.copySubtomograms(inputSet, suffix='Embedded')
        for row, item in enumerate(inputSet.iterItems(orderBy='id')):
            new = item.clone()
            setattr(new, FEATURE_ATTR, pwobj.String(featureString(features[row])))
            setattr(new, FEATURE_INDEX_ATTR, pwobj.Integer(row))
            out.append(new)
        return out

    def createOutputStep(self):
        out = self._embeddedSet()
        self._defineOutputs(**{EmbedOutputs.subtomograms.name: out})
        self._defineSourceRelation(self.inputSubtomograms, out)
        self._defineAdaptedModel()

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = self._modelErrors()
        subtomos = self.inputSubtomograms.get()
        if subtomos is not None and subtomos.getSize() == 0:
            errors.append('The input set of subtomograms is empty.')
        if subtomos is not None and not subtomos.getSamplingRate():
            errors.append('The input set has no sampling rate.')
        return errors

    def _warnings(self):
        warnings = self._modelWarnings()
        subtomos = self.inputSubtomograms.get()
        if subtomos is not None and subtomos.getSamplingRate() and \
                not 5 <= subtomos.getSamplingRate() <= 20:
            warnings.append('Voxel size %.2f Å is far from the model (10 Å): resampling will '
                            'change the box content a lot; consider binning first.'
                            % subtomos.getSamplingRate())
        return warnings

    def _modelName(self):
        if self._usesTrainedModel():
            return self.inputModel.get().getFileName()
        return 'the shipped %s model' % self._shippedModelName()

    def _summary(self):
        if not hasattr(self, EmbedOutputs.subtomograms.name):
            return ['Embedding not finished yet.']
        out = getattr(self, EmbedOutputs.subtomograms.name)
        return ['%d subtomograms embedded with %s; features in %s.'
                % (out.getSize(), self._modelName(), self._featuresFn())] + self._adaptSummary() \
            + self._modelSummary()

    def _methods(self):
        return ['Subtomograms were embedded into a 32-dimensional, orientation-invariant shape '
                'feature space by a 3D CNN trained on synthetic data (deepcluster, following '
                '[Moebel2022]), using %s.' % self._modelName()]
