"""deepcluster - classify: embed + cluster in one go, with the shipped model."""
from enum import Enum

from tomo.objects import SetOfClassesSubTomograms, SetOfSubTomograms

from ..objects import DeepClusterModel
from .protocol_cluster import ProtDeepClusterCluster
from .protocol_embed import ProtDeepClusterEmbed


class ClassifyOutputs(Enum):
    subtomograms = SetOfSubTomograms
    classes = SetOfClassesSubTomograms
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
        out = self._embeddedSet()
        self._defineOutputs(**{ClassifyOutputs.subtomograms.name: out})
        self._defineSourceRelation(self.inputSubtomograms, out)
        self._defineAdaptedModel()

    def _featuresSet(self):
        return getattr(self, ClassifyOutputs.subtomograms.name)

    def _validate(self):
        errors = ProtDeepClusterEmbed._validate(self)
        subtomos = self.inputSubtomograms.get()
        if subtomos is not None:
            errors += self._validateK(subtomos.getSize())
        return errors

    def _summary(self):
        return ProtDeepClusterCluster._summary(self) + self._adaptSummary()

    def _methods(self):
        return ProtDeepClusterEmbed._methods(self) + ProtDeepClusterCluster._methods(self)
