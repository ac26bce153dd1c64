"""The interactive map's Tk window on a real display (``make test-gui`` runs this
under Xvfb; skipped where there is no display): it opens without switching
matplotlib's backend, lasso / box / class selection and a click work through
the window, and a selection becomes a new run of the project."""
import os

import numpy as np
import pytest
from pyworkflow.tests import BaseTest, setupTestProject

from deepcluster.protocols import (ProtDeepClusterCluster, ProtDeepClusterEmbed,
                                   ProtDeepClusterSimulate)
from deepcluster.protocols.protocol_cluster import K_FIXED
from deepcluster.tests import link as _link

pytestmark = pytest.mark.skipif(not os.environ.get('DISPLAY'), reason='needs an X display '
                                '(make test-gui runs it under Xvfb)')




class TestMapWindow(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        sim = cls.newProtocol(ProtDeepClusterSimulate, procedural=2, nPerClass=10, boxSize=32,
                              seed=5, snrMin=2.0, snrMax=4.0, useGpu=False)
        cls.sim = cls.launchProtocol(sim)
        emb = cls.newProtocol(ProtDeepClusterEmbed, useGpu=False)
        _link(emb, 'inputSubtomograms', cls.sim, 'subtomograms')
        cls.embed = cls.launchProtocol(emb)
        clu = cls.newProtocol(ProtDeepClusterCluster, kMode=K_FIXED, numberOfClasses=3)
        _link(clu, 'inputSubtomograms', cls.embed, 'subtomograms')
        cls.cluster = cls.launchProtocol(clu)

    def test_window_selects_and_registers(self):
        import tkinter as tk
        import matplotlib
        import matplotlib.pyplot as plt
        from deepcluster.viewers.map_session import MapSession
        from deepcluster.viewers.map_window import EmbeddingMapWindow
        plt.switch_backend('TkAgg')            # what the Scipion project window does
        root = tk.Tk()
        try:
            window = EmbeddingMapWindow(MapSession(self.cluster), master=root, method='pca')
            window.start()
            while window.session.map is None:
                root.update()
            root.update()
            self.assertEqual(matplotlib.get_backend().lower(), 'tkagg')
            s = window.session
            lo, hi = s.xy.min(0) - 1, s.xy.max(0) + 1
            window.onLasso([tuple(lo), (hi[0], lo[1]), tuple(hi), (lo[0], hi[1])])
            self.assertEqual(int(s.mask.sum()), 30)
            window.add.set(False)

            class Event:
                def __init__(self, x, y):
                    self.xdata, self.ydata = x, y
            window.onBox(Event(*lo), Event(*((lo + hi) / 2)))
            self.assertEqual(int(s.mask.sum()), int(((s.xy >= lo) & (s.xy <= (lo + hi) / 2)).all(1).sum()))
            window.classList.selection_set(0)
            window.selectClasses()
            self.assertEqual(int(s.mask.sum()), int((s.classes == s.classIds()[0]).sum()))
            window.showSlices(0)
            self.assertIn('item %d' % s.ids[0], window.sliceText.get())
            for mode in ('true label', 'distance to class centre', 'class'):
                window.colour.set(mode)
                window.redraw()
                root.update()
            first = np.nonzero(s.classes == s.classIds()[0])[0]
            s.mask[:] = False
            s.mask[first[: len(first) // 2]] = True       # half a class: split into a new one
            prot = s.register('split', project=self.proj, wait=True)
            prot = self.proj.getProtocol(prot.getObjId())
            self.assertEqual(prot.classes.getSize(), 4)
            self.assertEqual(matplotlib.get_backend().lower(), 'tkagg')
            self.assertTrue(np.isfinite(s.xy).all())
        finally:
            root.destroy()
