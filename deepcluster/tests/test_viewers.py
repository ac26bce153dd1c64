"""Viewers headlessly: every handler returns its views without touching
matplotlib's backend; the 2-D map's selection becomes a subset or new classes
in the project (through the viewer's registration function and through
``deepcluster select`` + the import protocol); the model choice is explicit."""
import importlib
import os

import matplotlib
import numpy as np
from pyworkflow.tests import BaseTest, setupTestProject

from deepcluster.protocols import (ProtDeepClusterClassify, ProtDeepClusterCluster,
                                   ProtDeepClusterEmbed, ProtDeepClusterSelect,
                                   ProtDeepClusterSimulate, ProtDeepClusterTrain)
from deepcluster.protocols.protocol_base import MODEL_SHIPPED, MODEL_TRAINED, near_chance
from deepcluster.protocols.protocol_cluster import K_FIXED
from deepcluster.protocols.protocol_select import OUT_CLASSES
from deepcluster.tests import link as _link

K = 4




class TestDeepClusterViewers(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        sim = cls.newProtocol(ProtDeepClusterSimulate, procedural=3, nPerClass=10, boxSize=32,
                              seed=11, snrMin=2.0, snrMax=4.0, useGpu=False)
        cls.sim = cls.launchProtocol(sim)
        train = cls.newProtocol(ProtDeepClusterTrain, inputType=0, steps=6, batchSize=8, seed=1,
                                useGpu=False)
        _link(train, 'inputSubtomograms', cls.sim, 'subtomograms')
        cls.train = cls.launchProtocol(train)
        embed = cls.newProtocol(ProtDeepClusterEmbed, useGpu=False)       # the shipped model
        _link(embed, 'inputSubtomograms', cls.sim, 'subtomograms')
        cls.embed = cls.launchProtocol(embed)
        clu = cls.newProtocol(ProtDeepClusterCluster, kMode=K_FIXED, numberOfClasses=K, seed=2)
        _link(clu, 'inputSubtomograms', cls.embed, 'subtomograms')
        cls.cluster = cls.launchProtocol(clu)
        cfy = cls.newProtocol(ProtDeepClusterClassify, kMin=2, kMax=5, useGpu=False)   # auto k
        _link(cfy, 'inputSubtomograms', cls.sim, 'subtomograms')
        cls.classify = cls.launchProtocol(cfy)

    # ------------------------------------------------------------ handlers
    def test_every_handler_runs_without_switching_the_backend(self):
        """The GUI's backend is TkAgg; emulate 'not Agg' with svg: importing plots
        and running every handler must leave it as it is."""
        from pyworkflow.viewer import MessageView
        import matplotlib.pyplot as plt
        from deepcluster.viewers import (DeepClusterClassesViewer, DeepClusterEmbedViewer,
                                         DeepClusterSimulateViewer, DeepClusterTrainViewer)
        from deepcluster.viewers.map_window import EmbeddingMapView
        from deepcluster.viewers.viewers import PngView
        before = matplotlib.get_backend()
        calls = []
        orig_use, orig_switch = matplotlib.use, plt.switch_backend
        plt.switch_backend('svg')
        matplotlib.use = lambda *a, **k: calls.append(('use', a))
        plt.switch_backend = lambda *a, **k: calls.append(('switch_backend', a))
        try:
            import deepcluster.core.analysis.plots as plots
            importlib.reload(plots)
            embedPng = self.embed._getExtraPath('embedding.png')
            if os.path.exists(embedPng):
                os.remove(embedPng)            # made on first view: exercise that path too
            cases = [(DeepClusterSimulateViewer, self.sim, set()),
                     (DeepClusterTrainViewer, self.train, set()),
                     (DeepClusterEmbedViewer, self.embed, set()),
                     (DeepClusterClassesViewer, self.cluster, set()),
                     (DeepClusterClassesViewer, self.classify, set())]
            for viewerClass, prot, absent in cases:
                viewer = viewerClass(project=self.proj, protocol=prot)
                handlers = viewer._getVisualizeDict()
                for name, handler in handlers.items():
                    views = handler(name)
                    self.assertEqual(len(views), 1, (viewerClass.__name__, name))
                    view = views[0]
                    if name == 'showMap':
                        self.assertIsInstance(view, EmbeddingMapView)
                    elif isinstance(view, MessageView):
                        self.assertIn(name, absent, (viewerClass.__name__, name))
                    else:
                        self.assertIsInstance(view, PngView)
                        self.assertGreater(os.path.getsize(view.png), 5000, (viewerClass.__name__, name))
                self.assertEqual(matplotlib.get_backend(), 'svg', viewerClass.__name__)
            self.assertEqual(calls, [])
        finally:
            matplotlib.use, plt.switch_backend = orig_use, orig_switch
            plt.switch_backend(before)

    def test_choice_of_k_only_for_auto_k_runs(self):
        from deepcluster.viewers import DeepClusterClassesViewer
        fixed = DeepClusterClassesViewer(project=self.proj, protocol=self.cluster)._getVisualizeDict()
        auto = DeepClusterClassesViewer(project=self.proj, protocol=self.classify)._getVisualizeDict()
        self.assertNotIn('showKSelection', fixed)
        self.assertIn('showKSelection', auto)
        self.assertIn('showMap', fixed)

    def test_classes_gallery_viewer_on_any_set_of_classes(self):
        from deepcluster.viewers import DeepClusterClassesGalleryViewer
        viewer = DeepClusterClassesGalleryViewer(project=self.proj)
        views = viewer._visualize(self.cluster.classes)
        self.assertGreater(os.path.getsize(views[0].png), 5000)

    # ------------------------------------------------------------ the map
    def test_map_is_cached_and_selection_registers_subset_and_classes(self):
        from deepcluster.viewers.map_session import MapSession
        s = MapSession(self.cluster)
        self.assertEqual(s.n, 40)
        m, cached = s.computeMap('tsne')
        self.assertEqual(m.xy.shape, (40, 2))
        self.assertTrue(os.path.exists(os.path.join(self.cluster._getExtraPath('map'), 'map_tsne.npz')))
        m2, cached = MapSession(self.cluster).computeMap('tsne')
        self.assertTrue(cached)
        np.testing.assert_array_equal(m.xy, m2.xy)
        sizes = {c: int((s.classes == c).sum()) for c in s.classIds()}
        self.assertEqual(len(sizes), K)
        # a lasso around everything selects everything
        lo, hi = s.xy.min(0) - 1, s.xy.max(0) + 1
        self.assertEqual(s.selectPolygon([lo, (hi[0], lo[1]), hi, (lo[0], hi[1])]), 40)
        # whole classes: class 1 alone -> a subset of its members
        self.assertEqual(s.selectClasses([1]), sizes[1])
        row = s.pick(s.xy[0])
        self.assertEqual([a.ndim for a in s.centralSlices(row)], [2, 2, 2])
        sub = s.register('subset', project=self.proj, wait=True)
        sub = self.proj.getProtocol(sub.getObjId())
        self.assertTrue(sub.isFinished(), sub.getErrorMessage())
        self.assertEqual(sub.subtomograms.getSize(), sizes[1])
        first = sub.subtomograms.getFirstItem()
        self.assertAlmostEqual(first.getSamplingRate(), 10.0)
        # split: part of class 1 becomes a class of its own -> K + 1 classes
        half = np.nonzero(s.classes == 1)[0][: sizes[1] // 2]
        s.mask[:] = False
        s.mask[half] = True
        split = self.proj.getProtocol(s.register('split', project=self.proj, wait=True).getObjId())
        self.assertEqual(split.classes.getSize(), K + 1)
        self.assertEqual(sum(c.getSize() for c in split.classes), 40)
        self.assertIn(len(half), [c.getSize() for c in split.classes])
        for cls in split.classes:
            self.assertTrue(os.path.exists(cls.getRepresentative().getFileName()))
        # merge: a selection touching classes 1 and 2 -> K - 1 classes
        s.selectClasses([1, 2])
        merge = self.proj.getProtocol(s.register('merge', project=self.proj, wait=True).getObjId())
        self.assertEqual(merge.classes.getSize(), K - 1)
        self.assertEqual(max(c.getSize() for c in merge.classes), sizes[1] + sizes[2])

    def test_cli_select_then_import_protocol(self):
        from deepcluster.cli import main
        mapCsv = os.path.join(self.cluster._plotsDir(), 'map.csv')
        self.assertTrue(os.path.exists(mapCsv))
        out = self.getOutputPath('selection.csv')
        main(['-q', 'select', mapCsv, '--classes', '2', '--out', out])
        size2 = [c.getSize() for c in self.cluster.classes if c.getObjId() == 2][0]
        self.assertEqual(len(open(out).read().strip().splitlines()), size2 + 1)
        prot = self.newProtocol(ProtDeepClusterSelect)
        _link(prot, 'inputSubtomograms', self.embed, 'subtomograms')
        prot.selectionFile.set(out)
        prot = self.launchProtocol(prot)
        self.assertEqual(prot.subtomograms.getSize(), size2)
        # as classes: the labels of a split
        out2 = self.getOutputPath('split.csv')
        main(['-q', 'select', mapCsv, '--classes', '2', '--mode', 'split', '--out', out2])
        prot = self.newProtocol(ProtDeepClusterSelect, outputType=OUT_CLASSES)
        _link(prot, 'inputSubtomograms', self.embed, 'subtomograms')
        prot.selectionFile.set(out2)
        self.assertEqual(prot.validate(), [])
        prot = self.launchProtocol(prot)
        self.assertEqual(prot.classes.getSize(), K)      # class 2 moved to a new id: still K
        bad = self.newProtocol(ProtDeepClusterSelect)
        _link(bad, 'inputSubtomograms', self.embed, 'subtomograms')
        bad.selectionFile.set(mapCsv)            # not a selection file
        self.assertTrue(any('file,label' in e for e in bad.validate()))

    # ------------------------------------------------------------ the model choice
    def test_model_choice_is_explicit_and_warns_near_chance(self):
        prot = self.newProtocol(ProtDeepClusterClassify)
        _link(prot, 'inputSubtomograms', self.sim, 'subtomograms')
        _link(prot, 'inputModel', self.train, 'model')     # what Scipion's auto-fill does
        self.assertEqual(prot.modelSource.get(), MODEL_SHIPPED)
        self.assertEqual(prot._modelArgs(), ['--model', 'default'])
        self.assertFalse(prot.evalParamCondition('inputModel'))    # hidden until chosen
        self.assertEqual(prot._warnings(), [])
        prot.modelSource.set(MODEL_TRAINED)
        self.assertEqual(prot._modelArgs(), ['--model', self.train.model.getFileName()])
        acc, n = prot.modelQuality(self.train.model)
        self.assertEqual(n, 4)
        self.assertIsNotNone(acc)
        if near_chance(acc, n):        # 6 steps: at chance level on almost every machine
            self.assertTrue(any('near chance' in w for w in prot._warnings()))
            self.assertIn('near chance', ' '.join(prot._modelSummary()))
            self.assertIn('near chance', ' '.join(self.train._summary()))
        empty = self.newProtocol(ProtDeepClusterEmbed, modelSource=MODEL_TRAINED)
        _link(empty, 'inputSubtomograms', self.sim, 'subtomograms')
        self.assertTrue(any('choose a trained model' in e for e in empty.validate()))
        self.assertIn('Model: the shipped default model.', self.embed._summary())

    def test_project_opens_in_the_tomography_view_and_the_gui_line_works(self):
        from pyworkflow import Config
        from pyworkflow.project import Manager
        from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
        from deepcluster.demo import gui_command, use_tomography_view
        use_tomography_view(self.proj)
        again = Manager().loadProject(self.proj.getName())
        self.assertEqual(again.getProtocolView(), 'Tomography')
        views = ProtocolTreeConfig.load(self.proj.getDomain(),
                                        os.path.join(Config.SCIPION_LOCAL_CONFIG, Config.SCIPION_PROTOCOLS))
        self.assertIn('Tomography', views)
        line = gui_command('deepcluster_demo')
        launcher = line.split(' project ')[0].split()[-1]
        self.assertTrue(os.access(launcher, os.X_OK), launcher)
        self.assertTrue(line.endswith('/scipion project deepcluster_demo'))
        self.assertIn('SCIPION_USER_DATA=', line)
        self.assertNotIn('scipion3', line)

    def test_near_chance_threshold(self):
        self.assertTrue(near_chance(0.14, 7))
        self.assertFalse(near_chance(0.6, 7))
        self.assertTrue(near_chance(0.6, 2))
        self.assertFalse(near_chance(0.9, 2))
        self.assertFalse(near_chance(None, 7))
