"""deepcluster - cluster: classes of subtomograms from their shape features."""
import csv
import json
import os
from enum import Enum

import numpy as np
import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from tomo.objects import SetOfClassesSubTomograms

from .protocol_base import ProtDeepClusterBase

METHODS = ['kmeans', 'gmm', 'agglomerative', 'hdbscan', 'spectral']
K_FIXED, K_AUTO = 0, 1
K_CRITERIA = ['pca_bic', 'silhouette', 'bic', 'stability', 'calinski_harabasz']   # core.k_selection's
METRIC_NAMES = [('v_measure', 'V-measure'), ('homogeneity', 'homogeneity'),
                ('completeness', 'completeness'), ('ari', 'ARI'), ('nmi', 'NMI')]


class ClusterOutputs(Enum):
    classes = SetOfClassesSubTomograms


class ProtDeepClusterCluster(ProtDeepClusterBase):
    """Group embedded subtomograms into classes (k-means by default, as in the
    paper) and, when the items carry a ground-truth label (simulated data),
    score the classes (V-measure, homogeneity, completeness, ARI, NMI).
    Each class's representative is its member nearest the class centroid in
    feature space: a real subtomogram, not an average (averaging unaligned
    particles would blur them)."""
    _label = 'cluster'
    _possibleOutputs = ClusterOutputs

    def _defineParams(self, form):
        form.addSection(label='Input')
        self._defineSubtomogramsParam(form, 'Embedded subtomograms',
                                      'Output of "deepcluster - embed" (or any subset of it).')
        self._defineClusterParams(form)

    @staticmethod
    def _defineClusterParams(form):
        form.addSection(label='Clustering')
        form.addParam('kMode', params.EnumParam, choices=['fixed', 'auto'], default=K_AUTO,
                      display=params.EnumParam.DISPLAY_HLIST, label='Number of classes',
                      help='auto: chosen from the features within a range (see the viewer\'s '
                           'k-selection curve); fixed: you give k. For averaging, a few classes '
                           'too many cost less than too few.')
        form.addParam('numberOfClasses', params.IntParam, default=3, validators=[params.GE(1)],
                      condition='kMode==%d' % K_FIXED, label='k',
                      help='Number of classes to make (default 3; at most the number of '
                           'subtomograms). Ignored by hdbscan, which finds its own.')
        line = form.addLine('Range of k', condition='kMode==%d' % K_AUTO,
                            help='k is chosen from the data within this range (default 2 to 20); '
                                 'the score curve is the viewer\'s "Choice of k" plot.')
        line.addParam('kMin', params.IntParam, default=2, label='min')
        line.addParam('kMax', params.IntParam, default=20, label='max')
        form.addParam('kCriterion', params.EnumParam, choices=K_CRITERIA, default=0,
                      condition='kMode==%d' % K_AUTO, expertLevel=params.LEVEL_ADVANCED,
                      label='Criterion for k',
                      help='pca_bic (default): BIC of a Gaussian mixture in the 4 leading principal '
                           'components; on the shipped model\'s features of simulated data it lands '
                           'near the true number of classes. silhouette: best when the classes form '
                           'clean, separate groups; on noisy subtomograms it finds only the coarse '
                           'split (e.g. 3 for 14 classes). Either way, a few classes too many cost '
                           'less than too few: classes can be merged after averaging.')
        form.addParam('method', params.EnumParam, choices=METHODS, default=0,
                      label='Method',
                      help='k-means is the method of the paper. spectral: k-means on the '
                           'nearest-neighbour graph of the features, which does not split a class '
                           'that spreads wider than its neighbours; on the shipped model\'s held-out '
                           'test sets V-measure -0.01 to +0.03 against k-means (+0.007 on average). '
                           'hdbscan finds its own '
                           'number of classes and leaves outliers unclassified.')
        form.addParam('seed', params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label='Random seed',
                      help='Seeds the clustering restarts and the 2-D map (default 0): same seed, '
                           'same classes.')

    # ------------------------------------------------------------------ steps
    def _insertAllSteps(self):
        self._insertFunctionStep(self.writeFeaturesStep)
        self._insertFunctionStep(self.clusterStep)
        self._insertFunctionStep(self.createOutputStep)

    def _featuresSet(self):
        return self.inputSubtomograms.get()

    def _clusterDir(self):
        return self._getExtraPath('cluster')

    def writeFeaturesStep(self):
        subtomos = self._featuresSet()
        X = self.readFeatures(subtomos)
        os.makedirs(self._clusterDir(), exist_ok=True)
        paths = [item.getFileName() for item in subtomos.iterItems(orderBy='id')]
        np.save(os.path.join(self._clusterDir(), 'features.npy'), X)
        with open(os.path.join(self._clusterDir(), 'features.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['row', 'file'])
            w.writerows(enumerate(paths))
        self.writeTruthCsv(subtomos, paths, os.path.join(self._clusterDir(), 'truth.csv'))

    def clusterStep(self):
        d = self._clusterDir()
        k = 'auto' if self.kMode.get() == K_AUTO else self.numberOfClasses.get()
        args = [os.path.join(d, 'features.npy'), '--k', k, '--out', os.path.join(d, 'labels.csv'),
                '--method', METHODS[self.method.get()], '--seed', self.seed.get(),
                '--plots', self._plotsDir()]
        if k == 'auto':
            args += ['--k-range', self.kMin.get(), self.kMax.get(),
                     '--k-criterion', K_CRITERIA[self.kCriterion.get()]]
        if os.path.exists(os.path.join(d, 'truth.csv')):
            args += ['--truth', os.path.join(d, 'truth.csv')]
        self.runDeepCluster('cluster', args)

    def _plotsDir(self):
        return self._getExtraPath('plots')

    def createOutputStep(self):
        subtomos = self._featuresSet()
        labels, dists = [], []
        with open(os.path.join(self._clusterDir(), 'labels.csv'), newline='') as f:
            for row in csv.DictReader(f):
                labels.append(int(row['label']))
                dists.append(float(row.get('distance') or 0.0))
        ids = [item.getObjId() for item in subtomos.iterItems(orderBy='id')]
        classOf = dict(zip(ids, labels))
        distOf = dict(zip(ids, dists))
        # representative: the member nearest its centroid
        best = {}
        for item in subtomos.iterItems(orderBy='id'):
            c, dist = classOf[item.getObjId()], distOf[item.getObjId()]
            if c not in best or dist < best[c][0]:
                best[c] = (dist, item.getFileName(), item.getLocation())

        def updateItem(item, row=None):
            item.setClassId(classOf[item.getObjId()])
            item._dcDistance = pwobj.Float(distOf[item.getObjId()])

        def updateClass(cls, *args):
            rep = cls.getRepresentative()
            rep.setLocation(best[cls.getObjId()][2])
            rep.setSamplingRate(subtomos.getSamplingRate())

        classes = self._createSetOfClassesSubTomograms(subtomos)
        classes.classifyItems(updateItemCallback=updateItem, updateClassCallback=updateClass)
        self._defineOutputs(**{ClusterOutputs.classes.name: classes})
        self._defineSourceRelation(self.inputSubtomograms, classes)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        subtomos = self.inputSubtomograms.get()
        if subtomos is None:
            return errors
        if not self.hasFeatures(subtomos):
            errors.append('The input subtomograms carry no deepcluster features: run '
                          '"deepcluster - embed" first (or use "deepcluster - classify").')
        errors += self._validateK(subtomos.getSize())
        return errors

    def _validateK(self, n):
        if self.kMode.get() == K_FIXED and self.numberOfClasses.get() > n:
            return ['k = %d is larger than the number of subtomograms (%d).'
                    % (self.numberOfClasses.get(), n)]
        if self.kMode.get() == K_AUTO:
            if not 2 <= self.kMin.get() <= self.kMax.get():
                return ['Range of k: need 2 <= min <= max.']
            if self.kMin.get() >= n:
                return ['Range of k: min (%d) must be below the number of subtomograms (%d).'
                        % (self.kMin.get(), n)]
        return []

    def _report(self):
        fn = os.path.join(self._clusterDir(), 'labels.json')
        if not os.path.exists(fn):
            return None
        with open(fn) as f:
            return json.load(f)

    def _summary(self):
        if not hasattr(self, ClusterOutputs.classes.name):
            return ['Clustering not finished yet.']
        classes = getattr(self, ClusterOutputs.classes.name)
        lines = ['%d classes (%s, k %s). Representative = member nearest the centroid.'
                 % (classes.getSize(), METHODS[self.method.get()],
                    'chosen by %s' % K_CRITERIA[self.kCriterion.get()] if self.kMode.get() == K_AUTO
                    else 'fixed')]
        for cls in classes.iterItems(orderBy='id'):
            lines.append('  class %d: %d subtomograms' % (cls.getObjId(), cls.getSize()))
        metrics = (self._report() or {}).get('metrics')
        if metrics:
            lines.append('Against the ground-truth labels (%d items): ' % metrics['n'] + ', '.join(
                '%s %.3f' % (label, metrics[key]) for key, label in METRIC_NAMES if key in metrics))
        return lines

    def _methods(self):
        if not hasattr(self, ClusterOutputs.classes.name):
            return []
        classes = getattr(self, ClusterOutputs.classes.name)
        text = ('%d subtomograms were grouped into %d classes by %s clustering of their '
                'deepcluster shape features [Moebel2022]%s.'
                % (sum(c.getSize() for c in classes), classes.getSize(),
                   METHODS[self.method.get()],
                   ', with the number of classes chosen from the data' if self.kMode.get() == K_AUTO else ''))
        metrics = (self._report() or {}).get('metrics')
        if metrics and 'v_measure' in metrics:
            text += (' Against known labels: V-measure %.2f (homogeneity %.2f, completeness %.2f).'
                     % (metrics['v_measure'], metrics.get('homogeneity', 0), metrics.get('completeness', 0)))
        return [text]
