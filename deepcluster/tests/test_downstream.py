"""Our classes in the real downstream plugins (installed without their binaries:
requirements-downstream.txt): for each averaging / subset protocol, ``validate()``
passes and its pure-Python conversion step runs on our outputs and writes what it
should (coordinates, tomogram names, angles, sampling rate), checked against the
true poses, with the programs they would then run (runJob) recorded, not run.

Two kinds of input: the simulate protocol's set (tomograms, coordinates, true
poses) and an extraction-like set that another plugin registered (Dynamo's
"import subtomograms from tbl files" on tomograms imported by tomo). Classes
are given directly (a class of the classes output), as the classified set, and
through the pwem classes extractor.
"""
import glob
import json
import os
import sys

import numpy as np
import pytest

STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'standins')
if STANDINS not in sys.path:          # Xmipp binding stand-ins, for this test process only
    sys.path.insert(0, STANDINS)

for _name in ('reliontomo', 'emantomo', 'dynamo', 'xmipptomo'):
    pytest.importorskip(_name)

# Dynamo's import protocol runs as a real run, whose start checks that DYNAMO_HOME exists:
# an empty folder stands for it (the import itself needs no Dynamo binary)
_DYNAMO_HOME = os.path.join(os.environ.get('SCIPION_USER_DATA', '/tmp'), 'dynamo-1.1.532')   # named as the version it stands for
os.makedirs(_DYNAMO_HOME, exist_ok=True)
os.environ['DYNAMO_HOME'] = _DYNAMO_HOME

import importlib                                      # noqa: E402

import xmipp3.base                                    # noqa: E402
if not hasattr(xmipp3.base, 'isMdEmpty'):             # imported before the stand-ins were on the path
    importlib.reload(xmipp3.base)

import pyworkflow.utils as pwutils                    # noqa: E402
from pwem.protocols import ProtClassesSelector, ProtSubSet   # noqa: E402
from pyworkflow.tests import BaseTest, setupTestProject     # noqa: E402
from tomo.constants import BOTTOM_LEFT_CORNER, TR_RELION    # noqa: E402
from tomo.objects import convertMatrix                # noqa: E402
from tomo.protocols import ProtImportTomograms, ProtSplitEvenOddTomoSet, ProtTomoExtractCoords  # noqa: E402

from deepcluster.constants import LABEL_ATTR          # noqa: E402
from deepcluster.protocols import ProtDeepClusterClassify, ProtDeepClusterSimulate  # noqa: E402
from deepcluster.protocols.protocol_cluster import K_FIXED  # noqa: E402
from deepcluster.tests import link as _link  # noqa: E402

TILT = (-55.0, 65.0)
VOXEL = 10.0




def _rot_close(a, b, tol=2e-3):
    return np.allclose(np.asarray(a)[:3, :3], np.asarray(b)[:3, :3], atol=tol)


class _Subset:
    """What writeDynTable iterates: some items of a set."""

    def __init__(self, items):
        self.items = items

    def iterSubtomos(self):
        return iter(self.items)


class _FakeEmanProcess:
    """Stands for EMAN's e2converter process: records the particles it is sent."""
    sent = []

    def __init__(self, *args, **kwargs):
        self.stdin = self
        self.stdout = self

    def write(self, text):
        if text.strip():
            _FakeEmanProcess.sent.append(json.loads(text))

    def flush(self):
        pass

    def readline(self):
        return '\n'

    def kill(self):
        pass

    def wait(self):
        return 0


class TestDownstream(BaseTest):
    """Sources: 'sim' (simulate -> classify) and 'ext' (tomo import of tomograms +
    Dynamo import of subtomograms with tables -> classify)."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        sim = cls.newProtocol(ProtDeepClusterSimulate, procedural=2, nPerClass=12, boxSize=32,
                              samplingRate=VOXEL, tiltMin=TILT[0], tiltMax=TILT[1], seed=11,
                              perTomogram=12, tomoBinning=2, useGpu=False)
        cls.sim = cls.launchProtocol(sim)
        cls.classify = {'sim': cls._classify(cls.sim, 'subtomograms', 3)}
        cls.ext = cls._extractionLike()
        cls.classify['ext'] = cls._classify(cls.ext, 'subtomograms', 3)
        cls.selector = {}
        for key, prot in cls.classify.items():
            sel = cls.newProtocol(ProtClassesSelector, firstNElements=1)
            _link(sel, 'inputClasses', prot, 'classes')
            cls.selector[key] = cls.launchProtocol(sel)

    @classmethod
    def _classify(cls, source, output, k):
        prot = cls.newProtocol(ProtDeepClusterClassify, kMode=K_FIXED, numberOfClasses=k,
                               averageMembers=8, useGpu=False)
        _link(prot, 'inputSubtomograms', source, output)
        return cls.launchProtocol(prot)

    @classmethod
    def _extractionLike(cls):
        """Simulated particles in tomograms at their own voxel size, written as Dynamo
        tables (one folder per tomogram), imported back by tomo and Dynamo."""
        from dynamo.convert import writeDynTable
        from dynamo.protocols import DynamoImportSubtomos
        sim = cls.newProtocol(ProtDeepClusterSimulate, procedural=2, nPerClass=8, boxSize=32,
                              samplingRate=VOXEL, tiltMin=TILT[0], tiltMax=TILT[1], seed=5,
                              perTomogram=12, tomoBinning=1, useGpu=False)
        sim = cls.launchProtocol(sim)
        cls.extSim = sim
        tomoDir = sim._getExtraPath('simulated', 'tomograms')
        imp = cls.newProtocol(ProtImportTomograms, filesPath=os.path.abspath(tomoDir), filesPattern='*.mrc',
                              samplingRate=VOXEL, acquisitionAngleMin=TILT[0], acquisitionAngleMax=TILT[1])
        cls.extTomos = cls.launchProtocol(imp)
        root = os.path.abspath(cls.proj.getTmpPath('dynamo_tables'))
        byTomo = {}
        for st in sim.subtomograms.iterSubtomos():
            byTomo.setdefault(st.getCoordinate3D().getTomoId(), []).append(st.clone())
        for tsId, items in sorted(byTomo.items()):
            d = os.path.join(root, tsId)
            os.makedirs(d, exist_ok=True)
            for j, st in enumerate(items):
                os.symlink(os.path.abspath(st.getFileName()), os.path.join(d, 'particle_%03d.mrc' % j))
            tbl = os.path.join(d, '%s.tbl' % tsId)
            with open(tbl, 'w') as f:
                writeDynTable(f, _Subset(items))
            # as Dynamo writes them (and the plugin's reader expects): integer particle and
            # tomogram numbers (the plugin's writer gives the first as %.3f)
            rows = [line.split() for line in open(tbl)]
            with open(tbl, 'w') as f:
                for r in rows:
                    r[0], r[19] = str(int(float(r[0]))), str(len(byTomo) and sorted(byTomo).index(tsId) + 1)
                    f.write(' '.join(r) + '\n')
        dyn = cls.newProtocol(DynamoImportSubtomos, filesPath=root, filesPattern='*/*.tbl')
        _link(dyn, 'inputTomos', cls.extTomos, 'Tomograms')
        return cls.launchProtocol(dyn)

    # ------------------------------------------------------------- helpers
    def _prepare(self, cls_, **params):
        prot = self.newProtocol(cls_, **params)
        return prot

    def _convert(self, prot, *steps):
        """validate() (the form's checks and the protocol's _validate; its binaries' home
        is absent here by design), then run the conversion steps in this process with
        runJob recorded instead of run."""
        prot.validateInstallation = lambda: []
        errors = prot.validate()
        self.assertEqual(errors, [], '%s: %s' % (prot.getClassName(), errors))
        self.proj.saveProtocol(prot)
        pwutils.makePath(prot._getExtraPath(), prot._getTmpPath())
        calls = []
        prot.runJob = lambda program, args, *a, **kw: calls.append((program, args))
        if hasattr(prot, '_initialize'):
            prot._initialize()
        for step in steps:
            if callable(step):
                step(prot)
            else:
                getattr(prot, step)()
        return calls

    def _inputs(self, key):
        """(label, protocol, extended) of subtomogram inputs made from classes."""
        clf = self.classify[key]
        first = next(iter(clf.classes.iterItems(orderBy='id'))).getObjId()
        return [('classified set', clf, 'subtomograms'),
                ('one class given directly', clf, 'classes.%d' % first),
                ('through the classes extractor', self.selector[key], 'output')]

    def _truth(self, key):
        """{subtomogram file: (matrix, tomoId, (x, y, z) bottom-left, tomogram file)} of the source."""
        source = self.sim.subtomograms if key == 'sim' else self.ext.subtomograms
        out = {}
        for st in source.iterSubtomos():
            c = st.getCoordinate3D()
            out[os.path.realpath(st.getFileName())] = (
                np.array(st.getTransform().getMatrix()), c.getTomoId(),
                (c.getX(BOTTOM_LEFT_CORNER), c.getY(BOTTOM_LEFT_CORNER), c.getZ(BOTTOM_LEFT_CORNER)),
                st.getVolName())
        return out

    def _set(self, prot, extended):
        from pyworkflow.object import Pointer
        return Pointer(prot, extended=extended).get()

    # ------------------------------------------------------------- our outputs
    def test_outputs_are_extraction_like(self):
        for key in ('sim', 'ext'):
            clf = self.classify[key]
            out = clf.subtomograms
            self.assertTrue(out.hasCoordinates3D(), key)
            self.assertTrue(out.hasAlignment3D(), key)
            classes = clf.classes
            first = classes.getFirstItem()
            self.assertTrue(first.getCoordinates3D() is not None, key)
            self.assertGreater(len(first.getTomograms()), 0, key)
            for st in out.iterSubtomos():
                self.assertGreater(st.getClassId(), 0)
                self.assertTrue(st.getCoordinate3D().getTomoId().startswith('tomo_'))
                self.assertEqual(st.getVolName(), st.getCoordinate3D().getTomoId())
            avgs = clf.averages
            self.assertEqual(avgs.getSize(), classes.getSize())
            for avg in avgs:
                self.assertTrue(os.path.exists(avg.getFileName()))
                self.assertEqual(len(avg.getHalfMaps().split(',')), 2)
            self.assertIn('average of the aligned members', clf._summary()[0])
        self.assertEqual(self.sim.tomograms.getSize(), 3)
        self.assertEqual(self.sim.coordinates.getSize(), 36)

    # ------------------------------------------------------------- RELION
    def test_reliontomo_reconstruct_average_and_relion4_star(self):
        import reliontomo
        from emtable import Table
        from reliontomo.convert import convert40_tomo
        from reliontomo.constants import RELION_40_TOMO_LABELS
        from reliontomo.convert.convertBase import getTransformMatrixFromRow
        from reliontomo.protocols import ProtRelionSubTomoReconstructAvg
        original = reliontomo.Plugin.IS_GT50
        reliontomo.Plugin.IS_GT50 = classmethod(lambda c: False)        # RELION 4 star files
        try:
            for key in ('sim', 'ext'):
                truth = self._truth(key)
                for label, prot, ext in self._inputs(key):
                    rec = self.newProtocol(ProtRelionSubTomoReconstructAvg)
                    _link(rec, 'inputSubtomos', prot, ext)
                    self._convert(rec, 'convertInputStep')
                    star = rec._getFileName(rec.inStarName)
                    writer = convert40_tomo.Writer(starHeaders=RELION_40_TOMO_LABELS)
                    star2 = rec._getExtraPath('writer4.star')
                    writer.subtomograms2Star(self._set(prot, ext), star2)
                    for fn in (star, star2):
                        table = Table(fileName=fn)
                        self.assertEqual(len(table), self._set(prot, ext).getSize(), (key, label))
                        for row in table:
                            m, tsId, xyz, volName = truth[os.path.realpath(row.rlnImageName)]
                            self.assertEqual(row.rlnTomoName, tsId)
                            np.testing.assert_allclose([row.rlnCoordinateX, row.rlnCoordinateY,
                                                        row.rlnCoordinateZ], xyz, atol=1e-3)
                            back = convertMatrix(getTransformMatrixFromRow(row, sRate=VOXEL),
                                                 direction='set', convention=TR_RELION)
                            self.assertTrue(_rot_close(back, m), (key, label))
                            self.assertGreater(row.rlnClassNumber, 0)
        finally:
            reliontomo.Plugin.IS_GT50 = original

    # ------------------------------------------------------------- EMAN
    def test_emantomo_average_and_refinement(self):
        import emantomo.convert.convert as econv
        from emantomo.protocols import EmanProtSubTomoAverage, EmanProtTomoRefinement
        original = econv.Plugin.createEmanProcess
        econv.Plugin.createEmanProcess = classmethod(lambda c, *a, **k: _FakeEmanProcess())
        try:
            for key in ('sim', 'ext'):
                truth = self._truth(key)
                clf = self.classify[key]
                for label, prot, ext in self._inputs(key):
                    items = [it.clone() for it in self._set(prot, ext).iterSubtomos()]   # (one object, reused)
                    # average
                    _FakeEmanProcess.sent = []
                    avg = self.newProtocol(EmanProtSubTomoAverage)
                    _link(avg, 'inputSetOfSubTomogram', prot, ext)
                    calls = self._convert(avg, 'convertInputStep')
                    self._checkEmanParticles(truth, len(items), key, label)
                    self.assertTrue(any('e2proclst.py' in c[0] for c in calls))
                    parms = json.load(open(avg._getExtraPath('spt_00', 'particle_parms_01.json')))
                    self.assertEqual(len(parms), len(items))
                    for item, (_, value) in zip(items, sorted(parms.items(), key=lambda kv: int(
                            kv[0].rsplit(',', 1)[1].strip(' )')))):
                        m = np.array(json.loads(value['xform.align3d']['matrix'])).reshape(3, 4)
                        self.assertTrue(_rot_close(m, truth[os.path.realpath(item.getFileName())][0]))
                    # refinement against the class average
                    _FakeEmanProcess.sent = []
                    ref = self.newProtocol(EmanProtTomoRefinement)
                    _link(ref, 'inputSetOfSubTomogram', prot, ext)
                    _link(ref, 'inputRef', clf, 'averages.1')
                    calls = self._convert(ref, 'convertInputStep')
                    self._checkEmanParticles(truth, len(items), key, label)
                    self.assertTrue(any('--apix %f' % VOXEL in c[1] for c in calls))
        finally:
            econv.Plugin.createEmanProcess = original

    def _checkEmanParticles(self, truth, n, key, label):
        sent = _FakeEmanProcess.sent
        self.assertEqual(len(sent), n, (key, label))
        for d in sent:
            m, tsId, xyz, volName = truth[os.path.realpath(d['_filename'])]
            self.assertEqual(os.path.basename(d['hdfFn']), tsId + '.hdf', (key, label))   # one stack per tomogram
            self.assertNotIn('Missing', d['hdfFn'])

    # ------------------------------------------------------------- Dynamo
    def test_dynamo_average_and_mra(self):
        from pwem.convert.transformations import euler_matrix
        from dynamo.protocols import DynamoProtAvgSubtomograms, DynamoSubTomoMRA
        for key in ('sim', 'ext'):
            truth = self._truth(key)
            clf = self.classify[key]
            for label, prot, ext in self._inputs(key):
                items = {it.getObjId(): os.path.realpath(it.getFileName())
                         for it in self._set(prot, ext).iterSubtomos()}
                avg = self.newProtocol(DynamoProtAvgSubtomograms)
                _link(avg, 'inSubtomos', prot, ext)
                self._convert(avg, 'convertInputStep')
                tables = glob.glob(avg._getExtraPath('*.tbl'))
                self._checkDynamoTable(tables[0], items, truth, key, label)
                mra = self.newProtocol(DynamoSubTomoMRA)          # the class average as the template
                _link(mra, 'inputVolumes', prot, ext)
                _link(mra, 'templateRef', clf, 'averages.1')
                self._convert(mra, 'convertInputStep')
                self._checkDynamoTable(glob.glob(mra._getExtraPath('*.tbl'))[0], items, truth, key, label)
                cmds = open(glob.glob(mra._getExtraPath('*.m'))[0]).read()
                self.assertIn(os.path.abspath(clf.averages.getFirstItem().getFileName()), cmds)
                links = glob.glob(mra._getExtraPath('data', 'particle_*.mrc'))
                self.assertEqual(len(links), len(items))

    def _checkDynamoTable(self, fn, items, truth, key, label):
        from pwem.convert.transformations import euler_matrix
        rows = [line.split() for line in open(fn) if line.strip()]
        self.assertEqual(len(rows), len(items), (key, label))
        for r in rows:
            m, tsId, xyz, volName = truth[items[int(float(r[0]))]]
            np.testing.assert_allclose([float(v) for v in r[23:26]], xyz, atol=2e-3)
            self.assertEqual((float(r[13]), float(r[14])), TILT)
            # the plugin's writer stores euler_zxz(R) of the Scipion matrix (its reader,
            # eulerAngles2matrix, inverts R: the two are not each other's inverse)
            tdrot, tilt, narot = np.deg2rad([float(v) for v in r[6:9]])
            self.assertTrue(_rot_close(euler_matrix(tdrot, tilt, narot, axes='szxz'), m), (key, label))

    # ------------------------------------------------------------- Xmipp
    def test_xmipptomo_apply_transform_half_maps_and_map_back(self):
        import pwem.emlib.metadata as md
        from pwem import emlib
        from xmipptomo.protocols import (XmippProtApplyTransformSubtomo, XmippProtHalfMapsSubtomo,
                                         XmippProtSubtomoMapBack)
        for key in ('sim', 'ext'):
            truth = self._truth(key)
            clf = self.classify[key]
            for label, prot, ext in self._inputs(key):
                n = self._set(prot, ext).getSize()
                app = self.newProtocol(XmippProtApplyTransformSubtomo)
                _link(app, 'inputSubtomograms', prot, ext)
                self._convert(app, lambda p: p.convertInputStep(p._getExtraPath('input_subtomos.xmd')))
                self._checkXmd(app._getExtraPath('input_subtomos.xmd'), n, truth, key, label)
                half = self.newProtocol(XmippProtHalfMapsSubtomo)
                _link(half, 'inputSubtomograms', prot, ext)
                self._convert(half, lambda p: p.convertInputStep(p._getExtraPath('even.xmd'),
                                                                 p._getExtraPath('odd.xmd')))
                sizes = [md.getSize(fn) if os.path.exists(fn) else 0
                         for fn in (half._getExtraPath('even.xmd'), half._getExtraPath('odd.xmd'))]
                self.assertEqual(sum(sizes), n, (key, label))
                # map back, subtomogram mode, the class average as the reference
                mb = self.newProtocol(XmippProtSubtomoMapBack, selection=1)
                _link(mb, 'inputSubtomos', prot, ext)
                _link(mb, 'inputRef', clf, 'averages.1')
                self._mapBack(mb, truth, n, key, label, emlib)
            # class mode: one class (the classes output, then its first class is used)
            sub = self.newProtocol(ProtSubSet, chooseAtRandom=False)
            mb = self.newProtocol(XmippProtSubtomoMapBack, selection=0)
            _link(mb, 'inputClasses', clf, 'classes')
            first = clf.classes.getFirstItem()
            self._mapBack(mb, truth, first.getSize(), key, 'class mode', emlib)
            del sub

    def _checkXmd(self, fn, n, truth, key, label):
        import pwem.emlib.metadata as md
        from pwem import ALIGN_3D
        from pwem.emlib import MDL_IMAGE
        from xmipp3.convert import rowToAlignment
        mdata = md.MetaData(fn)
        self.assertEqual(mdata.size(), n, (key, label))
        for row in md.iterRows(mdata):
            path = row.getValue(MDL_IMAGE).split('@')[-1].replace(':mrc', '')
            m = truth[os.path.realpath(path)][0]
            back = rowToAlignment(row, ALIGN_3D).getMatrix()
            self.assertTrue(_rot_close(back, m), (key, label))

    def _mapBack(self, mb, truth, n, key, label, emlib):
        import pwem.emlib.metadata as md
        mb.validateInstallation = lambda: []
        self.assertEqual(mb.validate(), [], (key, label))
        tomos = mb._getTomogramsInvolved()
        self.assertGreater(len(tomos), 0, (key, label))
        self.proj.saveProtocol(mb)
        pwutils.makePath(mb._getExtraPath(), mb._getTmpPath())
        calls = []
        mb.runJob = lambda program, args, *a, **kw: calls.append((program, args))
        mb.prepareReference(False)
        rows = 0
        byTomo = {}
        for v in truth.values():
            byTomo.setdefault(v[1], []).append(v[2])
        for tsId in sorted({t.getTsId() for t in tomos.values()}):     # as its _insertAllSteps does
            mb.runMapBack(tsId, mb.paintingType.get(), False, 0.5)
            xmd = glob.glob(mb._getExtraPath('*%s*.xmd' % tsId))
            self.assertTrue(xmd, (key, label, tsId))
            mdata = md.MetaData(xmd[0])
            for row in md.iterRows(mdata):
                x, y, z = (row.getValue(emlib.MDL_XCOOR), row.getValue(emlib.MDL_YCOOR),
                           row.getValue(emlib.MDL_ZCOOR))
                self.assertTrue(any(np.allclose((x, y, z), np.floor(np.array(c) * self._coordScale(mb)),
                                                atol=1.01) for c in byTomo[tsId]), (key, label, x, y, z))
                rows += 1
        self.assertEqual(rows, n, (key, label))
        self.assertTrue(any('xmipp_tomo_map_back' in c[0] for c in calls), calls)

    def _coordScale(self, mb):
        return 1.0

    # ------------------------------------------------------------- pwem, tomo
    def test_subset_even_odd_and_extract_coordinates(self):
        for key in ('sim', 'ext'):
            clf = self.classify[key]
            tomograms = (self.sim, 'tomograms') if key == 'sim' else (self.extTomos, 'Tomograms')
            for label, prot, ext in self._inputs(key):
                n = self._set(prot, ext).getSize()
                sub = self.newProtocol(ProtSubSet, chooseAtRandom=True, nElements=max(1, n // 2))
                _link(sub, 'inputFullSet', prot, ext)
                sub = self.launchProtocol(sub)
                out = next(o for _, o in sub.iterOutputAttributes())
                self.assertEqual(out.getSize(), max(1, n // 2))
                self.assertTrue(out.hasCoordinates3D())
                split = self.newProtocol(ProtSplitEvenOddTomoSet)
                _link(split, 'inputSet', prot, ext)
                split = self.launchProtocol(split)
                halves = [o for _, o in split.iterOutputAttributes()]
                self.assertEqual(sum(h.getSize() for h in halves), n, (key, label))
                coords = self.newProtocol(ProtTomoExtractCoords)
                _link(coords, 'inputSubTomos', prot, ext)
                _link(coords, 'inputTomos', *tomograms)
                coords = self.launchProtocol(coords)
                out = next(o for _, o in coords.iterOutputAttributes())
                self.assertEqual(out.getSize(), n, (key, label))
                truth = self._truth(key)
                positions = {v[1]: [] for v in truth.values()}
                for v in truth.values():
                    positions[v[1]].append(v[2])
                for c in out.iterCoordinates():
                    xyz = (c.getX(BOTTOM_LEFT_CORNER), c.getY(BOTTOM_LEFT_CORNER), c.getZ(BOTTOM_LEFT_CORNER))
                    self.assertTrue(any(np.allclose(xyz, p, atol=1e-2) for p in positions[c.getTomoId()]),
                                    (key, label, xyz))
            if key == 'sim':        # the simulated truth rides along to the classified set
                self.assertTrue(all(getattr(st, LABEL_ATTR, None) is not None for st in clf.subtomograms))
