"""embed --adapt: streamed BatchNorm statistics, seeded fine-tuning, the guards,
the adapted model file and its card, and the Scipion outputs."""
import json
import os
import tempfile
import unittest

import numpy as np
import torch

from deepcluster.core import DeepClusterError
from deepcluster.core.inference import adapt
from deepcluster.core.inference.volumes import write_volume
from deepcluster.core.model.network import build_model, default_config, load_model, save_model
from deepcluster.tests import link as _link

BOX = 16
CLASSES = ['proc00', 'proc01', 'proc02', 'negative']


def tiny_model(seed=0):
    """An untrained fast network on 16^3 boxes whose card says it was trained on
    3 procedural classes + negative (the anchor of --adapt full)."""
    torch.manual_seed(seed)
    cfg = default_config('fast', CLASSES, box=BOX, voxel_size=10.0,
                         arch_params={'widths': [4, 4, 8, 8, 8], 'hidden': 16, 'l2_features': True})
    cfg['training'] = {'source': 'simulated on the fly', 'structures': [], 'procedural': 3, 'seed': 0,
                       'membrane_bound': [], 'embedded': [], 'negative_class': True,
                       'simulation': {'box': BOX, 'voxel_size': 10.0}}
    model = build_model(cfg)
    for m in adapt.bn_layers(model):        # statistics unlike the data's, as after training elsewhere
        m.running_mean.fill_(0.3)
        m.running_var.fill_(2.0)
    return model.eval(), cfg


def blobs(n, seed=0):
    """n noisy 16^3 volumes of two sizes of dark blob (labels 0/1)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - (BOX - 1) / 2
    lab = np.arange(n) % 2
    r = np.where(lab == 0, 2.5, 5.0)
    vols = np.stack([-np.exp(-(x ** 2 + y ** 2 + z ** 2) / ri ** 2) + rng.normal(0, 0.3, x.shape) for ri in r])
    return (vols * 3 + 1).astype(np.float32), lab


class CountingSource(adapt.VolumeSource):
    def __init__(self, vols, config):
        base = adapt.VolumeSource.from_arrays(vols, 10.0, config)
        self.sizes = []

        def get(idx):
            self.sizes.append(len(idx))
            return base.batch(idx)
        super().__init__(len(vols), get, base.description)


class TestBatchNorm(unittest.TestCase):
    def test_streamed_statistics_equal_the_full_batch_ones_read_in_batches(self):
        model, cfg = tiny_model()
        vols, _ = blobs(50)
        src = CountingSource(vols, cfg)
        streamed = adapt.reestimate_bn(tiny_model()[0], src, batch_size=8, progress=False)
        self.assertLessEqual(max(src.sizes), 8)            # never more than one batch in memory
        self.assertEqual(sum(src.sizes), 50 * len(adapt.bn_layers(model)))   # one pass per layer
        full = tiny_model()[0]                             # one full-batch training-mode pass
        for m in adapt.bn_layers(full):
            m.momentum = None
            m.reset_running_stats()
        full.train()
        with torch.no_grad():
            full.features(src.batch(np.arange(50)).unsqueeze(1))
        for a, b in zip(adapt.bn_layers(streamed), adapt.bn_layers(full)):
            np.testing.assert_allclose(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(a.running_var, b.running_var, rtol=1e-4, atol=1e-5)

    def test_bn_mode_is_deterministic_and_leaves_the_input_model_alone(self):
        model, cfg = tiny_model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        vols, _ = blobs(40)
        src = adapt.VolumeSource.from_arrays(vols, 10.0, cfg)
        old = adapt.MIN_SUBTOMOGRAMS
        adapt.MIN_SUBTOMOGRAMS = 20
        try:
            r1 = adapt.adapt_model(model, cfg, src, 'bn', guard=False, progress=False)
            r2 = adapt.adapt_model(model, cfg, src, 'bn', guard=False, progress=False)
        finally:
            adapt.MIN_SUBTOMOGRAMS = old
        self.assertTrue(r1.accepted)
        for k, v in r1.model.state_dict().items():
            self.assertTrue(torch.equal(v, r2.model.state_dict()[k]), k)
            self.assertTrue(torch.equal(model.state_dict()[k], before[k]), k)
        self.assertEqual(r1.config['adaptation']['mode'], 'bn')
        self.assertEqual(r1.config['adaptation']['n'], 40)
        self.assertNotIn('adaptation', cfg)


class TestFull(unittest.TestCase):
    def setUp(self):
        self.old = adapt.MIN_SUBTOMOGRAMS, adapt.RECLUSTER_EVERY, adapt.SYNTHETIC_BANK
        adapt.MIN_SUBTOMOGRAMS, adapt.RECLUSTER_EVERY, adapt.SYNTHETIC_BANK = 20, 3, 32

    def tearDown(self):
        adapt.MIN_SUBTOMOGRAMS, adapt.RECLUSTER_EVERY, adapt.SYNTHETIC_BANK = self.old

    def test_seeded_fine_tuning_repeats_exactly(self):
        torch.set_num_threads(1)
        model, cfg = tiny_model()
        vols, _ = blobs(40)
        src = adapt.VolumeSource.from_arrays(vols, 10.0, cfg)
        runs = [adapt.adapt_model(model, cfg, src, 'full', steps=4, seed=s, guard=False, progress=False)
                for s in (5, 5, 6)]
        a, b, c = (r.model.state_dict() for r in runs)
        for k in a:
            self.assertTrue(torch.equal(a[k], b[k]), k)
        self.assertFalse(all(torch.equal(a[k], c[k]) for k in a))
        card = runs[0].config['adaptation']
        self.assertEqual(card['finetune']['steps'], 4)
        self.assertEqual(card['finetune']['synthetic_items'], 32)
        enc = [k for k in a if k.startswith('encoder.') and not k.endswith(('running_mean', 'running_var',
                                                                            'num_batches_tracked'))]
        for k in enc:                        # the encoder's weights stay, the layers after it change
            self.assertTrue(torch.equal(a[k], model.state_dict()[k]), k)
        self.assertFalse(torch.equal(a['embed.0.weight'], model.state_dict()['embed.0.weight']))
        self.assertEqual(card['finetune']['anchor_classes'], 4)     # the card's procedural classes + negative
        self.assertEqual(card['seed'], 5)

    def test_wedge_views_keep_the_missing_wedge(self):
        """Each view's power spectrum is the original's mirrored/rotated by a proper
        180-degree rotation: zero where the original is zero (the wedge stays put)."""
        x = torch.randn(6, BOX, BOX, BOX)
        k = np.fft.fftfreq(BOX)
        kz, ky, kx = np.meshgrid(k, k, k, indexing='ij')
        wedge = torch.from_numpy(np.abs(kz) > np.abs(kx) * np.tan(np.radians(60)) + 1e-9)
        f = torch.fft.fftn(x, dim=(1, 2, 3))
        f[:, wedge] = 0
        x = torch.fft.ifftn(f, dim=(1, 2, 3)).real
        g = torch.Generator().manual_seed(0)
        v = adapt.wedge_views(x, g, noise=(0.0, 0.0))
        power = torch.fft.fftn(v, dim=(1, 2, 3)).abs()
        self.assertLess(float(power[:, wedge].max()), 1e-3 * float(power.max()))


class TestGuards(unittest.TestCase):
    def test_too_small_a_set_is_not_adapted(self):
        model, cfg = tiny_model()
        vols, _ = blobs(adapt.MIN_SUBTOMOGRAMS - 1)
        src = adapt.VolumeSource.from_arrays(vols, 10.0, cfg)
        with self.assertLogs('deepcluster.core.inference.adapt', 'WARNING') as logs:
            r = adapt.adapt_model(model, cfg, src, 'bn', progress=False)
        self.assertFalse(r.accepted)
        self.assertIs(r.model, model)
        self.assertIn('too few', r.reason)
        self.assertIn('too few', logs.output[0])

    def test_less_separable_features_keep_the_unadapted_model(self):
        model, cfg = tiny_model()
        vols, _ = blobs(40)
        src = adapt.VolumeSource.from_arrays(vols, 10.0, cfg)
        calls = []

        def fake(X, seed=0, **kw):     # before, then after: the adapted features score lower
            calls.append(len(X))
            return 0.5 if len(calls) == 1 else 0.4
        old = adapt.separability, adapt.MIN_SUBTOMOGRAMS
        adapt.separability, adapt.MIN_SUBTOMOGRAMS = fake, 20
        try:
            with self.assertLogs('deepcluster.core.inference.adapt', 'WARNING') as logs:
                r = adapt.adapt_model(model, cfg, src, 'bn', progress=False)
        finally:
            adapt.separability, adapt.MIN_SUBTOMOGRAMS = old
        self.assertFalse(r.accepted)
        self.assertIs(r.model, model)
        self.assertNotIn('adaptation', r.config)
        self.assertEqual(r.report['separability']['before'], 0.5)
        self.assertIn('less separable', logs.output[-1])

    def test_separability_prefers_separated_clusters(self):
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(4, 32))
        tight = np.repeat(centres, 50, 0) + 0.05 * rng.normal(size=(200, 32))
        loose = np.repeat(centres, 50, 0) + 1.0 * rng.normal(size=(200, 32))
        self.assertGreater(adapt.separability(tight), adapt.separability(loose))

    def test_unknown_mode(self):
        model, cfg = tiny_model()
        with self.assertRaises(DeepClusterError):
            adapt.adapt_model(model, cfg, adapt.VolumeSource.from_arrays(blobs(4)[0], 10.0, cfg), 'most')


class TestCli(unittest.TestCase):
    def test_embed_adapt_writes_a_reusable_model_with_a_card(self):
        from deepcluster.cli import main
        model, cfg = tiny_model()
        vols, _ = blobs(adapt.MIN_SUBTOMOGRAMS + 4)
        with tempfile.TemporaryDirectory() as d:
            mp = save_model(os.path.join(d, 'm.pt'), model, cfg)
            for i, v in enumerate(vols):
                write_volume(os.path.join(d, 'v%03d.mrc' % i), v, 10.0)
            out = os.path.join(d, 'out', 'features.npy')
            files = [os.path.join(d, 'v%03d.mrc' % i) for i in range(len(vols))]
            old = adapt.separability
            adapt.separability = lambda X, seed=0, **kw: 1.0       # the guard passes
            try:
                main(['embed', *files, '--out', out, '--model', mp, '--adapt', 'bn', '--contrast', 'dark',
                      '--precision', 'fp32'])
            finally:
                adapt.separability = old
            pt = os.path.join(d, 'out', 'features_adapted.pt')
            rep = json.load(open(os.path.join(d, 'out', 'features_adapt.json')))
            self.assertTrue(rep['accepted'])
            self.assertEqual(rep['model_file'], pt)
            adapted, acfg = load_model(pt)
            card = acfg['adaptation']
            self.assertEqual((card['mode'], card['n'], card['adapted_on']['files']), ('bn', len(vols), len(vols)))
            self.assertEqual(card['base_model']['path'], os.path.abspath(mp))
            out2 = os.path.join(d, 'again.npy')
            main(['embed', *files, '--out', out2, '--model', pt, '--adapt', 'none', '--contrast', 'dark',
                  '--precision', 'fp32'])
            np.testing.assert_allclose(np.load(out2), np.load(out), atol=1e-5)
            self.assertFalse(os.path.exists(os.path.join(d, 'again_adapted.pt')))


if __name__ == '__main__':
    unittest.main()


class TestProtocols(unittest.TestCase):
    """Headless Scipion: embed with 'Adapt to these data' registers the adapted model
    (a DeepClusterModel), which classify (embed + cluster) then uses."""

    @classmethod
    def setUpClass(cls):
        from pyworkflow.tests import BaseTest, setupTestProject
        from deepcluster.protocols import ProtDeepClusterEmbed, ProtDeepClusterSimulate

        class _Project(BaseTest):
            pass
        setupTestProject(_Project)
        cls.proj = _Project
        sim = _Project.newProtocol(ProtDeepClusterSimulate, procedural=3, nPerClass=26, boxSize=32,
                                   samplingRate=10.0, seed=7, snrMin=1.0, snrMax=2.0, useGpu=False)
        cls.sim = _Project.launchProtocol(sim)
        # bn; on these in-domain data the silhouette falls by 0.08 (> the guard's 0.05): forced
        embed = _Project.newProtocol(ProtDeepClusterEmbed, adapt=1, adaptForce=True, useGpu=False)
        _link(embed, 'inputSubtomograms', cls.sim, 'subtomograms')
        cls.embed = _Project.launchProtocol(embed)

    def test_adapted_model_output_and_its_use_in_classify(self):
        from deepcluster.protocols import ProtDeepClusterClassify
        from deepcluster.protocols.protocol_cluster import K_FIXED
        n = self.sim.subtomograms.getSize()
        self.assertGreaterEqual(n, adapt.MIN_SUBTOMOGRAMS)
        model = self.embed.adaptedModel
        self.assertTrue(os.path.isfile(model.getFileName()))
        self.assertEqual(model.getBox(), 40)
        card = load_model(model.getFileName())[1]['adaptation']
        self.assertEqual((card['mode'], card['n']), ('bn', n))
        self.assertIn('adapted to these data (bn, %d subtomograms' % n, '\n'.join(self.embed._summary()).lower())
        prot = self.proj.newProtocol(ProtDeepClusterClassify, kMode=K_FIXED, numberOfClasses=4, adapt=0,
                                     useGpu=False)
        if prot.hasAttribute('modelSource'):
            prot.modelSource.set(1)          # a trained model, not the shipped one
        _link(prot, 'inputSubtomograms', self.sim, 'subtomograms')
        _link(prot, 'inputModel', self.embed, 'adaptedModel')
        prot = self.proj.launchProtocol(prot)
        self.assertEqual(prot.classes.getSize(), 4)
        np.testing.assert_allclose(np.load(prot._getExtraPath('features.npy')),
                                   np.load(self.embed._getExtraPath('features.npy')), atol=1e-4)
        self.assertFalse(hasattr(prot, 'adaptedModel'))


