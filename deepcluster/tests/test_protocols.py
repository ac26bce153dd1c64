"""Headless Scipion: the protocols run in real projects and chain as a user would
chain them (simulate -> train -> embed -> cluster -> classes selector / subset)."""
import os

import numpy as np
from pwem.protocols import ProtClassesSelector, ProtSubSet
from pyworkflow.tests import BaseTest, setupTestProject

from deepcluster.constants import FEATURE_ATTR, LABEL_ATTR, PRECISIONS, SHIPPED_MODELS
from deepcluster.protocols import (ProtDeepClusterClassify, ProtDeepClusterCluster,
                                   ProtDeepClusterEmbed, ProtDeepClusterSimulate,
                                   ProtDeepClusterTrain)
from deepcluster.protocols.protocol_base import MODEL_TRAINED
from deepcluster.protocols.protocol_cluster import K_FIXED
from deepcluster.tests import link as _link

N_PER_CLASS = 8
N_CLASSES = 3 + 1          # procedural + negative




class TestDeepClusterChain(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        sim = cls.newProtocol(ProtDeepClusterSimulate, procedural=3, nPerClass=N_PER_CLASS,
                              boxSize=32, samplingRate=10.0, tiltMin=-55, tiltMax=65, seed=7,
                              snrMin=1.0, snrMax=2.0, perTomogram=16, useGpu=False)
        cls.sim = cls.launchProtocol(sim)
        train = cls.newProtocol(ProtDeepClusterTrain, inputType=0, steps=30, batchSize=8,
                                learningRate=1e-3, seed=1, useGpu=False)
        _link(train, 'inputSubtomograms', cls.sim, 'subtomograms')
        cls.train = cls.launchProtocol(train)
        embed = cls.newProtocol(ProtDeepClusterEmbed, useGpu=False, modelSource=MODEL_TRAINED)
        _link(embed, 'inputSubtomograms', cls.sim, 'subtomograms')
        _link(embed, 'inputModel', cls.train, 'model')
        cls.embed = cls.launchProtocol(embed)
        clu = cls.newProtocol(ProtDeepClusterCluster, kMode=K_FIXED, numberOfClasses=N_CLASSES, seed=3)
        _link(clu, 'inputSubtomograms', cls.embed, 'subtomograms')
        cls.cluster = cls.launchProtocol(clu)

    def test_simulated_set(self):
        subtomos = self.sim.subtomograms
        self.assertEqual(subtomos.getSize(), N_CLASSES * N_PER_CLASS)
        self.assertAlmostEqual(subtomos.getSamplingRate(), 10.0)
        acq = subtomos.getAcquisition()
        self.assertEqual((acq.getAngleMin(), acq.getAngleMax()), (-55, 65))
        labels = [getattr(st, LABEL_ATTR).get() for st in subtomos]
        self.assertEqual(sorted(set(labels)), ['negative', 'proc00', 'proc01', 'proc02'])
        self.assertTrue(all(labels.count(lab) == N_PER_CLASS for lab in set(labels)))
        first = subtomos.getFirstItem()
        self.assertEqual(first.getDim(), (32, 32, 32))
        self.assertEqual(first.getAcquisition().getAngleMax(), 65)
        self.assertGreaterEqual(self.sim.templates.getSize(), 3)
        # what an extraction registers: tomograms, coordinates with tomoId, true poses
        self.assertTrue(subtomos.hasCoordinates3D() and subtomos.hasAlignment3D())
        tomos = {t.getTsId(): t.clone() for t in self.sim.tomograms}
        self.assertEqual(len(tomos), 2)                              # 32 items, 16 per tomogram
        self.assertAlmostEqual(self.sim.tomograms.getSamplingRate(), 20.0)   # binned 2x
        self.assertEqual(self.sim.coordinates.getSize(), N_CLASSES * N_PER_CLASS)
        for st in subtomos.iterSubtomos():
            coord = st.getCoordinate3D()
            self.assertIn(coord.getTomoId(), tomos)
            self.assertEqual(st.getVolName(), coord.getTomoId())
            m = st.getTransform().getMatrix()
            np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-5)
            self.assertFalse(np.allclose(m, np.eye(4)))

    def test_model_output(self):
        model = self.train.model
        self.assertTrue(os.path.exists(model.getFileName()))
        self.assertEqual(sorted(model.getClassNames()), ['negative', 'proc00', 'proc01', 'proc02'])
        self.assertEqual(model.getBox(), 32)

    def test_embedded_set_keeps_items_and_adds_features(self):
        out = self.embed.subtomograms
        self.assertEqual(out.getSize(), self.sim.subtomograms.getSize())
        log = open(self.embed.getLogPaths()[0]).read()
        self.assertIn('protein looks dark', log)            # contrast told from the data
        feats = np.load(self.embed._getExtraPath('features.npy'))
        self.assertEqual(feats.shape, (out.getSize(), 32))
        for item, row in zip(out.iterItems(orderBy='id'), feats):
            vec = np.array(getattr(item, FEATURE_ATTR).get().split(','), dtype=np.float32)
            np.testing.assert_allclose(vec, row, rtol=1e-4, atol=1e-5)
            self.assertTrue(getattr(item, LABEL_ATTR).get())     # other attributes survive

    def test_classes_keep_every_item_with_score_and_representative(self):
        classes = self.cluster.classes
        self.assertEqual(classes.getSize(), N_CLASSES)
        self.assertEqual(sum(c.getSize() for c in classes), N_CLASSES * N_PER_CLASS)
        for cls in classes:
            rep = cls.getRepresentative()
            self.assertTrue(os.path.exists(rep.getFileName()))
            self.assertAlmostEqual(rep.getSamplingRate(), 10.0)
            for item in cls:
                self.assertGreaterEqual(item._dcDistance.get(), 0.0)
                self.assertEqual(item.getSamplingRate(), 10.0)
        summary = '\n'.join(self.cluster._summary())
        self.assertIn('V-measure', summary)
        # aligned items (the true poses): each class's representative is its average
        self.assertIn('average of the aligned members', summary)
        avgs = {a.getClassId(): a.clone() for a in self.cluster.averages}
        self.assertEqual(sorted(avgs), sorted(c.getObjId() for c in classes))
        for cls in classes:
            self.assertEqual(cls.getRepresentative().getFileName(), avgs[cls.getObjId()].getFileName())
            self.assertEqual(len(avgs[cls.getObjId()].getHalfMaps().split(',')), 2)
        classified = self.cluster.subtomograms
        self.assertEqual(classified.getSize(), N_CLASSES * N_PER_CLASS)
        self.assertTrue(all(st.getClassId() >= 1 for st in classified))
        self.assertTrue(classified.hasCoordinates3D())
        self.assertEqual(classes.getFirstItem().getCoordinates3D().getSize(), N_CLASSES * N_PER_CLASS)
        self.assertEqual(set(ProtDeepClusterCluster._possibleOutputs.__members__),
                         {'classes', 'subtomograms', 'averages'})
        self.assertTrue(self.cluster._methods()[0])

    def test_classes_chain_into_selector_and_subset(self):
        sel = self.newProtocol(ProtClassesSelector, firstNElements=2)
        _link(sel, 'inputClasses', self.cluster, 'classes')
        sel = self.launchProtocol(sel)
        sizes = sorted((c.getSize() for c in self.cluster.classes), reverse=True)
        self.assertEqual(sel.output.getSize(), sum(sizes[:2]))
        self.assertAlmostEqual(sel.output.getSamplingRate(), 10.0)

        rep = self.newProtocol(ProtClassesSelector, firstNElements=1, extractRepresentative=True)
        _link(rep, 'inputClasses', self.cluster, 'classes')
        rep = self.launchProtocol(rep)
        self.assertEqual(rep.output.getSize(), 1)

        sub = self.newProtocol(ProtSubSet, chooseAtRandom=True, nElements=5)
        _link(sub, 'inputFullSet', sel, 'output')
        sub = self.launchProtocol(sub)
        out = sub.outputSubTomograms if hasattr(sub, 'outputSubTomograms') else next(
            o for _, o in sub.iterOutputAttributes())
        self.assertEqual(out.getSize(), 5)
        first = out.getFirstItem()
        self.assertTrue(getattr(first, LABEL_ATTR).get())
        self.assertEqual(first.getAcquisition().getAngleMin(), -55)

    def test_classify_runs_whole_chain_with_auto_k(self):
        prot = self.newProtocol(ProtDeepClusterClassify, kMin=2, kMax=6, useGpu=False,   # auto: the default
                                modelSource=MODEL_TRAINED)
        _link(prot, 'inputSubtomograms', self.sim, 'subtomograms')
        _link(prot, 'inputModel', self.train, 'model')
        prot = self.launchProtocol(prot)
        self.assertEqual(prot.subtomograms.getSize(), N_CLASSES * N_PER_CLASS)
        self.assertTrue(2 <= prot.classes.getSize() <= 6)
        self.assertIn('k chosen by pca_bic', prot._summary()[0])
        from deepcluster.core.analysis.k_selection import K_CRITERIA
        from deepcluster.protocols.protocol_cluster import K_CRITERIA as FORM_CRITERIA
        self.assertEqual(FORM_CRITERIA, list(K_CRITERIA))

    def test_embed_with_the_shipped_accurate_model(self):
        prot = self.newProtocol(ProtDeepClusterEmbed, shippedModel=SHIPPED_MODELS.index('accurate'), useGpu=False,
                                precision=PRECISIONS.index('fp32'))
        _link(prot, 'inputSubtomograms', self.sim, 'subtomograms')
        self.assertTrue(prot.evalParamCondition('shippedModel'))      # shown: no trained model given
        self.assertFalse(self.embed.evalParamCondition('shippedModel'))
        prot = self.launchProtocol(prot)
        self.assertIn('the shipped accurate model', prot._summary()[0])
        log = open(prot.getLogPaths()[0]).read()
        self.assertIn('--model accurate', log)
        self.assertIn('--precision fp32', log)
        self.assertIn('network: cpu, fp32', log)
        self.assertEqual(np.load(prot._getExtraPath('features.npy')).shape, (N_CLASSES * N_PER_CLASS, 32))
        from deepcluster.core.model.network import SHIPPED_MODELS as CORE_MODELS
        self.assertEqual(SHIPPED_MODELS, list(CORE_MODELS))
        from deepcluster.core.device import PRECISIONS as CORE_PRECISIONS
        self.assertEqual(PRECISIONS, list(CORE_PRECISIONS))

    def test_validation_messages(self):
        clu = self.newProtocol(ProtDeepClusterCluster, kMode=K_FIXED, numberOfClasses=1000)
        _link(clu, 'inputSubtomograms', self.embed, 'subtomograms')
        self.assertTrue(any('larger than' in e for e in clu.validate()))
        clu = self.newProtocol(ProtDeepClusterCluster, kMin=1)          # auto k, the default
        _link(clu, 'inputSubtomograms', self.embed, 'subtomograms')
        self.assertTrue(any('need 2 <= min <= max' in e for e in clu.validate()))
        clu = self.newProtocol(ProtDeepClusterCluster, kMin=1000, kMax=1000)
        _link(clu, 'inputSubtomograms', self.embed, 'subtomograms')
        self.assertTrue(any('below the number of subtomograms' in e for e in clu.validate()))
        clu = self.newProtocol(ProtDeepClusterCluster, kMode=K_FIXED, numberOfClasses=2)
        _link(clu, 'inputSubtomograms', self.sim, 'subtomograms')
        self.assertTrue(any('no deepcluster features' in e for e in clu.validate()))
        sim = self.newProtocol(ProtDeepClusterSimulate)
        self.assertTrue(any('procedural' in e for e in sim.validate()))
        sim = self.newProtocol(ProtDeepClusterSimulate, procedural=2, tiltMin=10, tiltMax=-10)
        self.assertTrue(any('Tilt range' in e for e in sim.validate()))

    def test_train_from_structures_simulates_on_the_fly(self):
        train = self.newProtocol(ProtDeepClusterTrain, inputType=1, steps=4, batchSize=8,
                                 boxSize=24, membraneBound='proc01', useGpu=False)
        _link(train, 'inputVolumes', self.sim, 'templates')
        train = self.launchProtocol(train)
        self.assertEqual(sorted(train.model.getClassNames()),
                         ['negative', 'proc00', 'proc01', 'proc01_mb', 'proc02'])
        self.assertEqual(train.model.getBox(), 24)
        self.assertIn('proc01_mb', '\n'.join(train._summary()))
        # a time limit far below one step: the model is still written, and the summary says so
        quick = self.newProtocol(ProtDeepClusterTrain, inputType=1, steps=50, batchSize=8, boxSize=24,
                                 maxMinutes=1e-4, useGpu=False)
        _link(quick, 'inputVolumes', self.sim, 'templates')
        quick = self.launchProtocol(quick)
        self.assertIn('Time limit of 0.0001 min reached after 1 of 50 steps.', '\n'.join(quick._summary()))
        self.assertIn('trained for 1 steps', quick._methods()[0])
