"""Viewers of the deepcluster protocols.

Every figure is a PNG drawn by deepcluster.core.analysis.plots (Agg): the protocols write
them as they run (or, for the embedding, on first view); a viewer only shows
them, so what the GUI shows is exactly what a headless run or the CLI makes.
"""
import os

import numpy as np
import pyworkflow.protocol.params as params
from pwem.viewers import EmPlotter, EmProtocolViewer
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO

from ..constants import LABEL_ATTR
from ..protocols import (ProtDeepClusterClassify, ProtDeepClusterCluster, ProtDeepClusterEmbed,
                         ProtDeepClusterSimulate, ProtDeepClusterTrain)


class DeepClusterPngViewer(EmProtocolViewer):
    """Shows the PNGs of one protocol, one form entry per figure."""
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]
    _targets = []
    FIGURES = []          # (param name, label, function returning the PNG path or None)

    def _defineParams(self, form):
        form.addSection(label='Figures')
        for name, label, _ in self.FIGURES:
            form.addParam(name, params.LabelParam, label=label)

    def _getVisualizeDict(self):
        return {name: (lambda e=None, fn=fn, label=label: self._showPng(fn(self), label))
                for name, label, fn in self.FIGURES}

    def _showPng(self, png, title):
        if not png or not os.path.exists(png):
            return [self.errorMessage('No "%s" figure for this run (it is made when the run '
                                      'finishes, and some need ground-truth labels).' % title, title)]
        import matplotlib.image as mpimg
        img = mpimg.imread(png)
        h, w = img.shape[:2]
        plotter = EmPlotter(windowTitle=title, figsize=(min(14, w / 90.0), min(10, h / 90.0)))
        ax = plotter.createSubPlot('', '', '')
        ax.imshow(img)
        ax.set_axis_off()
        plotter.png = png
        return [plotter]


class DeepClusterSimulateViewer(DeepClusterPngViewer):
    _label = 'deepcluster simulation viewer'
    _targets = [ProtDeepClusterSimulate]
    FIGURES = [('showMontage', 'Central slices (XY, XZ) of each class',
                lambda v: v.protocol._getExtraPath('simulated', 'montage.png'))]


class DeepClusterTrainViewer(DeepClusterPngViewer):
    _label = 'deepcluster training viewer'
    _targets = [ProtDeepClusterTrain]
    FIGURES = [('showCurves', 'Training curves (loss, accuracy, learning rate)',
                lambda v: os.path.join(v.protocol._workDir(), 'training_curves.png')),
               ('showConfusion', 'Validation confusion matrix',
                lambda v: os.path.join(v.protocol._workDir(), 'confusion.png'))]


def _embeddingPng(viewer):
    """t-SNE of the features, coloured by true label when the items have one
    (made on first view and kept in the run's extra folder)."""
    prot = viewer.protocol
    png = prot._getExtraPath('embedding.png')
    if not os.path.exists(png) and hasattr(prot, 'subtomograms'):
        from deepcluster.core.analysis.plots import plot_embedding
        subtomos = prot.subtomograms
        X = prot.readFeatures(subtomos)
        truth = None
        if prot.hasTruth(subtomos):
            truth = np.array([getattr(st, LABEL_ATTR).get() for st in subtomos.iterItems(orderBy='id')])
        labels = truth if truth is not None else np.zeros(len(X), int)
        plot_embedding(png, X, labels, title='t-SNE of the features' +
                       (' (coloured by true label)' if truth is not None else ''))
    return png


class DeepClusterEmbedViewer(DeepClusterPngViewer):
    _label = 'deepcluster features viewer'
    _targets = [ProtDeepClusterEmbed]
    FIGURES = [('showEmbedding', 't-SNE of the features', _embeddingPng)]


def _plot(name):
    return lambda v: os.path.join(v.protocol._plotsDir(), name)


class DeepClusterClassesViewer(DeepClusterPngViewer):
    _label = 'deepcluster classes viewer'
    _targets = [ProtDeepClusterCluster, ProtDeepClusterClassify]
    FIGURES = [('showEmbedding', 't-SNE of the features by class (and true label)', _plot('embedding.png')),
               ('showGallery', 'Gallery: central slices of members nearest each centroid', _plot('gallery.png')),
               ('showSizes', 'Class sizes', _plot('cluster_sizes.png')),
               ('showContingency', 'Contingency matrix (true labels vs classes)', _plot('contingency.png')),
               ('showMetrics', 'V-measure, homogeneity, completeness vs k', _plot('metrics_vs_k.png')),
               ('showKSelection', 'Choice of k (score curve)', _plot('k_selection.png'))]
