"""deepcluster - classify: embed + cluster in one go, with the shipped model."""
import os
from enum import Enum

import numpy as np
from tomo.objects import SetOfAverageSubTomograms, SetOfClassesSubTomograms, SetOfSubTomograms

from ..objects import DeepClusterModel
from ..constants import LABEL_ATTR
from .protocol_cluster import ProtDeepClusterCluster
from .protocol_embed import ProtDeepClusterEmbed


class ClassifyOutputs(Enum):
    subtomograms = SetOfSubTomograms        # the input's items with features and class id
    classes = SetOfClassesSubTomograms
    averages = SetOfAverageSubTomograms     # when the items carry an alignment
    adaptedModel = DeepClusterModel


class ProtDeepClusterClassify(ProtDeepClusterCluster, ProtDeepClusterEmbed):
    """For users who just want the classes: embeds the subtomograms (shipped model
    unless another is given) and clusters them. Same results as running
    "embed" then "cluster"; both outputs are registered."""
    _label = 'classify (embed + cluster)'
    _possibleOutputs = ClassifyOutputs

    def _defineParams(self, form):
        form.addSection(label='Input')
        self._defineSubtomogramsParam(form)
        self._defineModelParam(form)
        self._defineEmbedParams(form)
        self._defineClusterParams(form)
        self._defineGpuParams(form)

    def _insertAllSteps(self):
        self._insertEmbedSteps()
        self._insertFunctionStep(self.createEmbeddedStep)
        self._insertFunctionStep(self.writeFeaturesStep)
        self._insertFunctionStep(self.clusterStep)
        self._insertFunctionStep(self.createOutputStep)

    def createEmbeddedStep(self):
        # the subtomograms (features + class id on each item) are registered with the
        # classes by createOutputStep: one copy of the set, written once
        self._defineAdaptedModel()

    def _featuresSet(self):
        return self.inputSubtomograms.get()

    def writeFeaturesStep(self):
        """The cluster step reads embed's features.npy (+ its features.csv) as is;
        only the ground truth, if any, is written here (one pass over the set)."""
        os.makedirs(self._clusterDir(), exist_ok=True)
        with open(self._getExtraPath('subtomograms.txt')) as f:
            paths = [line for line in f.read().splitlines() if line]
        labels = []
        for item in self.inputSubtomograms.get().iterItems(orderBy='id'):
            label = getattr(item, LABEL_ATTR, None)
            labels.append(label.get() if label is not None else None)
        self._writeRowFiles(paths, labels)

    def _clusterFeaturesFn(self):
        return self._featuresFn()

    def _outputFeatures(self):
        return np.load(self._featuresFn())

    def _validate(self):
        errors = ProtDeepClusterEmbed._validate(self)
        subtomos = self.inputSubtomograms.get()
        if subtomos is not None:
            errors += self._validateK(subtomos.getSize())
        return errors

    def _summary(self):
        return ProtDeepClusterCluster._summary(self) + self._adaptSummary() + self._modelSummary()

    def _methods(self):
        return ProtDeepClusterEmbed._methods(self) + ProtDeepClusterCluster._methods(self)
