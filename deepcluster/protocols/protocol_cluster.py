"""deepcluster - cluster: classes of subtomograms from their shape features."""
import csv
import json
import os
from enum import Enum

import numpy as np
import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from tomo.objects import (AverageSubTomogram, SetOfAverageSubTomograms, SetOfClassesSubTomograms,
                          SetOfSubTomograms)

from ..constants import FEATURE_ATTR, FEATURE_INDEX_ATTR, LABEL_ATTR
from .protocol_base import ProtDeepClusterBase, featureString

METHODS = ['kmeans', 'gmm', 'agglomerative', 'hdbscan', 'spectral']
K_FIXED, K_AUTO = 0, 1
K_CRITERIA = ['pca_bic', 'silhouette', 'bic', 'stability', 'calinski_harabasz']   # core.k_selection's
METRIC_NAMES = [('v_measure', 'V-measure'), ('homogeneity', 'homogeneity'),
                ('completeness', 'completeness'), ('ari', 'ARI'), ('nmi', 'NMI')]


class ClusterOutputs(Enum):
    classes = SetOfClassesSubTomograms
    subtomograms = SetOfSubTomograms            # the input's items, each with its classId
    averages = SetOfAverageSubTomograms         # when the items carry an alignment

AVERAGE_MEMBERS = 50       # default cap of members averaged per class (the nearest to its centre)
GALLERY_MEMBERS = 4


class ProtDeepClusterCluster(ProtDeepClusterBase):
    """Group embedded subtomograms into classes (k-means by default, as in the
    paper) and, when the items carry a ground-truth label (simulated data),
    score the classes (V-measure, homogeneity, completeness, ARI, NMI).
    Outputs: the classes (with the input's coordinates), the input's subtomograms
    with their class id, and, when the items carry an alignment (transforms from
    template matching or a refinement), the class averages: each class's members
    (up to a cap, nearest the centre first) averaged in their aligned frame in
    Fourier space, weighted by each member's rotated missing wedge, with even/odd
    half maps. Without an alignment a class's representative is its member
    nearest the class centroid in feature space (averaging unaligned particles
    would blur them)."""
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
        form.addParam('averageMembers', params.IntParam, default=AVERAGE_MEMBERS,
                      validators=[params.GE(1)], expertLevel=params.LEVEL_ADVANCED,
                      label='Members per class average',
                      help='When the subtomograms carry an alignment, each class average is made '
                           'of at most this many members, those nearest the class centre (half '
                           'maps: alternate members). Bounds the time on large sets.')
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
        """features.npy + features.csv (file of each row) and truth.csv, in one pass."""
        subtomos = self._featuresSet()
        os.makedirs(self._clusterDir(), exist_ok=True)
        rows, paths, labels = [], [], []
        for item in subtomos.iterItems(orderBy='id'):
            rows.append(self.itemFeature(item))
            paths.append(item.getFileName())
            label = getattr(item, LABEL_ATTR, None)
            labels.append(label.get() if label is not None else None)
        np.save(os.path.join(self._clusterDir(), 'features.npy'), np.vstack(rows))
        self._writeRowFiles(paths, labels)

    def _writeRowFiles(self, paths, labels):
        d = self._clusterDir()
        with open(os.path.join(d, 'features.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['row', 'file'])
            w.writerows(enumerate(paths))
        if labels and all(labels):
            with open(os.path.join(d, 'truth.csv'), 'w', newline='') as f:
                w = csv.writer(f)
                w.writerow(['file', 'label'])
                w.writerows(zip(paths, labels))

    def _clusterFeaturesFn(self):
        return os.path.join(self._clusterDir(), 'features.npy')

    def clusterStep(self):
        d = self._clusterDir()
        k = 'auto' if self.kMode.get() == K_AUTO else self.numberOfClasses.get()
        args = [self._clusterFeaturesFn(), '--k', k, '--out', os.path.join(d, 'labels.csv'),
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

    def _averagesDir(self):
        return self._getExtraPath('averages')

    def _outputSource(self):
        """The set whose items, with their class ids, become the classified output."""
        return self._featuresSet()

    def _outputFeatures(self):
        """Features to attach to the output items (N x D, set order), or None when the
        items carry them already."""
        return None

    def createOutputStep(self):
        from deepcluster.core.analysis import averages as core_averages
        source = self._outputSource()
        from deepcluster.core.analysis.cluster_files import read_cluster_labels
        labels, dists = [], []
        labels_csv = os.path.join(self._clusterDir(), 'labels.csv')
        read_cluster_labels(labels_csv)          # refuses a labels.csv + .json pair of two runs
        with open(labels_csv, newline='') as f:
            for row in csv.DictReader(f):
                labels.append(int(row['label']))
                dists.append(float(row.get('distance') or 0.0))
        labels, dists = np.array(labels), np.array(dists)
        features = self._outputFeatures()
        # the members each class average is made of: nearest the centre first
        cap = self.averageMembers.get() if self.hasAttribute('averageMembers') else AVERAGE_MEMBERS
        chosen = {}
        for c in sorted(set(labels.tolist()) - {0}):
            idx = np.nonzero(labels == c)[0]
            chosen[c] = idx[np.argsort(dists[idx], kind='stable')][:cap]
        wanted = set(np.concatenate(list(chosen.values())).tolist()) if chosen else set()
        locations, matrices, aligned = {}, {}, True
        out = self._createSetOfSubTomograms('Classified')
        out.copyInfo(source)
        for row, item in enumerate(source.iterItems(orderBy='id')):
            item.setClassId(int(labels[row]))
            coord = item.getCoordinate3D() if item.hasCoordinate3D() else None
            if coord is not None and coord.getTomoId():
                item.setVolName(coord.getTomoId())   # tomo's convention (iterSubtomos(volume) matches tsId)
            item._dcDistance = pwobj.Float(float(dists[row]))
            if features is not None:
                setattr(item, FEATURE_ATTR, pwobj.String(featureString(features[row])))
                setattr(item, FEATURE_INDEX_ATTR, pwobj.Integer(row))
            if row in wanted:
                locations[row] = item.getLocation()
                t = item.getTransform() if item.hasTransform() else None
                if t is None or t.getMatrix() is None:
                    aligned = False
                else:
                    matrices[row] = np.array(t.getMatrix(), dtype=np.float64)
            out.append(item)
        if len(labels) != out.getSize():
            raise ValueError('labels.csv has %d rows for %d subtomograms' % (len(labels), out.getSize()))
        out.write()
        aligned = aligned and bool(matrices) and source.hasAlignment3D() and \
            any(not np.allclose(m, np.eye(4)) for m in matrices.values())
        sr = source.getSamplingRate()
        reps, results = {}, {}
        if aligned:
            tilt = self._tiltRange(source)
            keys = sorted(matrices)                  # the chosen rows, indexed compactly
            pos = {r: j for j, r in enumerate(keys)}
            mats = np.stack([matrices[r] for r in keys])
            order = {c: [pos[int(i)] for i in idx] for c, idx in chosen.items()}
            results = core_averages.class_averages(
                lambda js: np.stack([_loadVolume(locations[keys[j]]) for j in js]),
                order, mats, tilt, sr)
            reps = self._writeAverages(results, sr)
        self._writeGallery(results, chosen, locations, labels, aligned)
        nearest = {c: locations[int(idx[0])] for c, idx in chosen.items() if len(idx)}

        def updateItem(item, row=None):
            pass                               # class ids are on the items already

        def updateClass(cls, *args):
            rep = cls.getRepresentative()
            c = cls.getObjId()
            if c in reps:
                rep.setLocation(reps[c][0])
            else:
                rep.setLocation(nearest[c])
            rep.setSamplingRate(sr)

        classes = self._createSetOfClassesSubTomograms(out)
        if out.hasCoordinates3D():            # a pointer of its own (one object can't be in two outputs)
            ptr = out.getCoordinates3D(asPointer=True)
            classes.setCoordinates3D(pwobj.Pointer(ptr.getObjValue(), extended=ptr.getExtended()))
        classes.classifyItems(updateItemCallback=updateItem, updateClassCallback=updateClass)
        outputs = {ClusterOutputs.classes.name: classes, ClusterOutputs.subtomograms.name: out}
        if reps:
            avgs = self._createSetOfAverageSubTomograms()
            avgs.copyInfo(source)
            for c in sorted(reps):
                avg = AverageSubTomogram()
                avg.setLocation(reps[c][0])
                avg.setSamplingRate(sr)
                avg.setHalfMaps(list(reps[c][1:]))
                avg.setClassId(c)
                avg.setObjLabel('class %d (%d members averaged)' % (c, results[c]['n']))
                avg._dcMembers = pwobj.Integer(results[c]['n'])
                avg._dcClassSize = pwobj.Integer(int((labels == c).sum()))
                avg._dcResolution = pwobj.Float(results[c]['resolution'])   # A, FSC 0.143 (None: none)
                avgs.append(avg)
            outputs[ClusterOutputs.averages.name] = avgs
        self._writeRepresentativeInfo(results, chosen, labels, aligned)
        self._defineOutputs(**outputs)
        for o in outputs.values():
            self._defineSourceRelation(self.inputSubtomograms, o)

    @staticmethod
    def _tiltRange(subtomos):
        acq = subtomos.getAcquisition()
        lo, hi = (acq.getAngleMin(), acq.getAngleMax()) if acq is not None else (None, None)
        if lo is None or hi is None or not lo < hi:
            return (-90.0, 90.0)                 # no wedge known: treat as fully sampled
        return (float(lo), float(hi))

    def _writeAverages(self, results, sr):
        from deepcluster.core.inference.volumes import write_volume
        d = self._averagesDir()
        os.makedirs(d, exist_ok=True)
        reps = {}
        for c, r in results.items():
            names = [os.path.join(d, 'class_%03d%s.mrc' % (c, s)) for s in ('', '_half1', '_half2')]
            for fn, key in zip(names, ('average', 'half1', 'half2')):
                write_volume(fn, r[key], sr)
            reps[c] = names
        return reps

    def _writeGallery(self, results, chosen, locations, labels, aligned):
        """gallery.png: per class its average (XY and XZ central slices, half maps)
        and its members nearest the centre; without an alignment, the members only."""
        from deepcluster.core.analysis.plots import plot_gallery
        rows = {}
        for c, idx in chosen.items():
            imgs = []
            if c in results:
                avg = results[c]['average']
                n = avg.shape[0] // 2
                imgs += [avg[n], avg[:, n], results[c]['half1'][n], results[c]['half2'][n]]
            for i in idx[:GALLERY_MEMBERS if c in results else 2 * GALLERY_MEMBERS]:
                v = _loadVolume(locations[int(i)])
                imgs.append(v[v.shape[0] // 2])
            rows['class %d: %d items' % (c, int((labels == c).sum()))] = imgs
        if not rows:
            return
        if aligned:
            cap = max(r['n'] for r in results.values()) if results else 0
            title = ('Class averages (aligned, missing-wedge weighted; up to %d members each): '
                     'XY, XZ, half 1, half 2, then members nearest the centre' % cap)
        else:
            title = 'No alignment on the items: members nearest each class centre (central XY slice)'
        os.makedirs(self._plotsDir(), exist_ok=True)
        plot_gallery(os.path.join(self._plotsDir(), 'gallery.png'), rows, max_per_class=8, title=title)

    def _writeRepresentativeInfo(self, results, chosen, labels, aligned):
        info = dict(aligned=bool(aligned), classes={})
        for c, idx in chosen.items():
            entry = dict(size=int((labels == c).sum()))
            if c in results:
                r = results[c]
                entry.update(averaged=r['n'], resolution=r['resolution'], coverage=r['coverage'],
                             fsc=r['fsc'])
            info['classes'][str(c)] = entry
        with open(os.path.join(self._averagesDir() if aligned else self._clusterDir(),
                               'representatives.json'), 'w') as f:
            json.dump(info, f, indent=1)

    def _representativeInfo(self):
        for d in (self._averagesDir(), self._clusterDir()):
            fn = os.path.join(d, 'representatives.json')
            if os.path.exists(fn):
                with open(fn) as f:
                    return json.load(f)
        return None

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
        info = self._representativeInfo() or {}
        if info.get('aligned'):
            rep = ('Representative = average of the aligned members (missing-wedge weighted, '
                   'even/odd half maps; output "averages").')
        else:
            rep = ('Representative = member nearest the centroid (the items carry no alignment, '
                   'so no averages).')
        lines = ['%d classes (%s, k %s). %s'
                 % (classes.getSize(), METHODS[self.method.get()],
                    'chosen by %s' % K_CRITERIA[self.kCriterion.get()] if self.kMode.get() == K_AUTO
                    else 'fixed', rep)]
        for cls in classes.iterItems(orderBy='id'):
            line = '  class %d: %d subtomograms' % (cls.getObjId(), cls.getSize())
            entry = info.get('classes', {}).get(str(cls.getObjId()), {})
            if 'averaged' in entry:
                line += ', average of %d%s' % (entry['averaged'], ', FSC 0.143 at %.0f A'
                                               % entry['resolution'] if entry.get('resolution') else '')
            lines.append(line)
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


def _loadVolume(location):
    """(n, n, n) float32 of an item's (index, file) location (MRC, stacks too)."""
    import mrcfile
    index, fn = location
    with mrcfile.mmap(fn.split(':')[0], mode='r', permissive=True) as mrc:
        data = mrc.data
        vol = data[(index or 1) - 1] if data.ndim == 4 else data
        return np.array(vol, dtype=np.float32)
