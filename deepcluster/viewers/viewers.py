"""Viewers of the deepcluster protocols.

Every figure is a PNG drawn by deepcluster.core.analysis.plots on its own Agg
canvas: the protocols write them as they run (or, for the embedding, on first
view); a viewer only shows them, in a plain Tk window (PngView), so what the GUI
shows is exactly what a headless run or the CLI makes, and matplotlib's backend
is never switched in the GUI process. The interactive 2-D map (map_window.py)
draws with matplotlib on a Tk canvas of its own.

DeepClusterClassesGalleryViewer works on any SetOfClassesSubTomograms and
needs neither xmipp (Scipion's "Tomo viewer") nor the libxcb packages (the
metadata viewer).
"""
import os

import numpy as np
import pyworkflow.protocol.params as params
from pwem.viewers import EmProtocolViewer
from pyworkflow.viewer import DESKTOP_TKINTER, WEB_DJANGO, View, Viewer
from tomo.objects import SetOfClassesSubTomograms

from ..constants import LABEL_ATTR
from ..protocols import (ProtDeepClusterClassify, ProtDeepClusterCluster, ProtDeepClusterEmbed,
                         ProtDeepClusterSimulate, ProtDeepClusterTrain)
from ..protocols.protocol_cluster import K_AUTO


class PngView(View):
    """A PNG in a Tk window (scaled down to fit the screen); nothing is drawn
    or imported from Tk until show()."""

    def __init__(self, png, title, tkParent=None):
        self.png = png
        self.title = title
        self.tkParent = tkParent
        self.window = None

    def show(self):
        import tkinter as tk
        from PIL import Image, ImageTk
        own = self.tkParent is None
        win = tk.Tk() if own else tk.Toplevel(self.tkParent)
        win.title(self.title)
        img = Image.open(self.png)
        maxw, maxh = int(win.winfo_screenwidth() * 0.9), int(win.winfo_screenheight() * 0.85)
        scale = min(1.0, maxw / img.width, maxh / img.height)
        if scale < 1.0:
            img = img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        photo = ImageTk.PhotoImage(img, master=win)
        label = tk.Label(win, image=photo, bg='white')
        label.image = photo          # keep a reference, or Tk shows nothing
        label.pack(fill=tk.BOTH, expand=True)
        tk.Label(win, text=self.png, fg='grey30', font=('TkDefaultFont', 8)).pack(anchor=tk.W)
        self.window = win
        if own:
            win.mainloop()
        return win


def _noFigure(viewer, title):
    return [viewer.errorMessage('No "%s" figure for this run (it is made when the run '
                                'finishes, and some need ground-truth labels).' % title, title)]


class DeepClusterPngViewer(EmProtocolViewer):
    """Shows the PNGs of one protocol, one form entry per figure."""
    _environments = [DESKTOP_TKINTER, WEB_DJANGO]
    _targets = []
    # (param name, label, function(viewer) -> PNG path or None, function(protocol) -> offered?)
    FIGURES = []
    MAP = False           # an entry for the interactive 2-D map

    def _figures(self):
        return [(name, label, fn) for name, label, fn, *when in self.FIGURES
                if not when or when[0](self.protocol)]

    def _defineParams(self, form):
        form.addSection(label='Figures')
        if self.MAP:
            form.addParam('mapMethod', params.EnumParam, choices=['t-SNE', 'UMAP', 'PCA'],
                          default=0, display=params.EnumParam.DISPLAY_HLIST, label='2-D map by',
                          help='t-SNE (openTSNE) or UMAP (umap-learn) of the features, or PCA '
                               '(fast, linear). Computed once per run and method, kept in the '
                               'run\'s extra/map folder; beyond 5,000 items a random 5,000 are '
                               'drawn and the others placed by their nearest neighbours.')
            form.addParam('showMap', params.LabelParam,
                          label='Interactive 2-D map: lasso/box selection, new subsets or classes',
                          help='Colour by class, true label or distance to the class centre; '
                               'select with a lasso, a box or whole classes; click a point to see '
                               'its central slices; the selection becomes a new set of '
                               'subtomograms or new classes (split or merge) in the project.')
        for name, label, _ in self._figures():
            form.addParam(name, params.LabelParam, label=label)

    def _getVisualizeDict(self):
        d = {name: (lambda e=None, fn=fn, label=label: self._showPng(fn(self), label))
             for name, label, fn in self._figures()}
        if self.MAP:
            d['showMap'] = self._showMap
        return d

    def _showPng(self, png, title):
        if not png or not os.path.exists(png):
            return _noFigure(self, title)
        return [PngView(png, title, tkParent=self.getTkRoot())]

    def _showMap(self, e=None):
        from .map_window import EmbeddingMapView
        method = ('tsne', 'umap', 'pca')[self.mapMethod.get() if hasattr(self, 'mapMethod') else 0]
        return [EmbeddingMapView(self.protocol, tkParent=self.getTkRoot(), method=method)]


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
    (made on first view, by core's Agg canvas, and kept in the run's extra folder)."""
    prot = viewer.protocol
    png = prot._getExtraPath('embedding.png')
    if not os.path.exists(png) and hasattr(prot, 'subtomograms'):
        from deepcluster.core.analysis.plots import plot_embedding
        subtomos = prot.subtomograms
        X = prot.readFeatures(subtomos)
        if prot.hasTruth(subtomos):
            truth = np.array([getattr(st, LABEL_ATTR).get() for st in subtomos.iterItems(orderBy='id')])
            plot_embedding(png, X, truth, legend_title='true class',
                           title='t-SNE of the features, coloured by true class')
        else:
            plot_embedding(png, X, np.full(len(X), 'all'), legend_title='items',
                           title='t-SNE of the features (no labels: not clustered yet)')
    return png


class DeepClusterEmbedViewer(DeepClusterPngViewer):
    _label = 'deepcluster features viewer'
    _targets = [ProtDeepClusterEmbed]
    MAP = True
    FIGURES = [('showEmbedding', 't-SNE of the features (coloured by true class if known)',
                _embeddingPng)]


def _plot(name):
    return lambda v: os.path.join(v.protocol._plotsDir(), name)


def _autoK(prot):
    return prot.kMode.get() == K_AUTO


class DeepClusterClassesViewer(DeepClusterPngViewer):
    _label = 'deepcluster classes viewer'
    _targets = [ProtDeepClusterCluster, ProtDeepClusterClassify]
    MAP = True
    FIGURES = [('showEmbedding', 't-SNE of the features by class (and by true class)',
                _plot('embedding.png')),
               ('showGallery', 'Gallery: central slices of the members nearest each class centre',
                _plot('gallery.png')),
               ('showSizes', 'Class sizes', _plot('cluster_sizes.png')),
               ('showContingency', 'Contingency matrix (true classes vs classes)',
                _plot('contingency.png')),
               ('showMetrics', 'V-measure, homogeneity, completeness vs k', _plot('metrics_vs_k.png')),
               ('showKSelection', 'Choice of k (score curve of the automatic choice)',
                _plot('k_selection.png'), _autoK)]


# -------------------------------------------------- any SetOfClassesSubTomograms
def classesGallery(classes, png, perClass=8):
    """gallery.png of a SetOfClassesSubTomograms: per class its representative
    (first) and members, central XY slices (core's plot_gallery). Returns png."""
    import mrcfile
    from deepcluster.core.analysis.plots import plot_gallery

    def slice_of(location):
        index, fn = location
        with mrcfile.mmap(fn.split(':')[0], mode='r', permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
        if data.ndim == 4:
            data = data[(index or 1) - 1]
        return data[data.shape[0] // 2] if data.ndim == 3 else data

    rows = {}
    for cls in classes.iterItems(orderBy='id'):
        imgs = []
        rep = cls.getRepresentative()
        if rep is not None and rep.getFileName() and os.path.exists(rep.getFileName().split(':')[0]):
            imgs.append(slice_of(rep.getLocation()))
        for item in cls.iterItems(orderBy='id', limit=perClass - len(imgs)):
            if os.path.exists(item.getFileName().split(':')[0]):
                imgs.append(slice_of(item.getLocation()))
        if imgs:
            rows['class %d: %d items' % (cls.getObjId(), cls.getSize())] = imgs
    if not rows:
        return None
    plot_gallery(png, rows, max_per_class=perClass,
                 title='Classes: representative (first), then members (central XY slice)')
    return png


class DeepClusterClassesGalleryViewer(Viewer):
    """Central slices of every class of any SetOfClassesSubTomograms (no xmipp,
    no libxcb needed)."""
    _label = 'deepcluster classes gallery'
    _environments = [DESKTOP_TKINTER]
    _targets = [SetOfClassesSubTomograms]

    def _visualize(self, obj, **kwargs):
        png = os.path.abspath(self._getTmpPath('deepcluster_classes_%s.png' % obj.strId()))
        os.makedirs(os.path.dirname(png), exist_ok=True)
        if classesGallery(obj, png) is None:
            return [self.errorMessage('The classes hold no readable subtomogram files.',
                                      'deepcluster classes gallery')]
        return [PngView(png, 'deepcluster classes gallery: %s' % (obj.getObjLabel() or obj),
                        tkParent=self.getTkRoot())]
