"""The data model: physics invariants, determinism, labels, CLI (fast, tiny boxes)."""
import dataclasses
import os

import mrcfile
import numpy as np
import pytest
import torch

from deepcluster.core import DeepClusterError
from deepcluster.cli import main
from deepcluster.core.datamodel.structures import procedural_templates
from deepcluster.core.datamodel.simulate import SIDES, SimulationConfig, Simulator, random_rotations
from deepcluster.core.datamodel.simulated_set import simulate_to_folder
from deepcluster.core.inference.volumes import read_labels, read_volume

BOX = 24


@pytest.fixture(scope='module')
def templates():
    return procedural_templates(3, 10.0, seed=0)


def quiet(**kw):
    """No context at all: a lone particle in noise."""
    base = dict(box=BOX, crowding_probability=0.0, membrane_probability=0.0, bead_probability=0.0,
                ice_amplitude=(0.0, 0.0))
    base.update(kw)
    return SimulationConfig(**base)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sphere(n, r):
    ax = np.arange(n) - n // 2
    z, y, x = np.meshgrid(ax, ax, ax, indexing='ij')
    return z * z + y * y + x * x <= r * r


# ---------------------------------------------------------------------- API
def test_class_names_and_batch_contract(templates):
    sim = Simulator(templates, SimulationConfig(box=BOX), membrane_bound=['proc01'])
    assert sim.class_names == ['proc00', 'proc01', 'proc02', 'proc01_mb', 'negative']
    labels = torch.arange(10) % len(sim.class_names)
    x = sim.batch(labels, gen())
    assert x.shape == (10, BOX, BOX, BOX) and x.dtype == torch.float32 and x.device.type == 'cpu'
    assert torch.isfinite(x).all()
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(10), atol=1e-4)
    assert torch.allclose(x.std(dim=(1, 2, 3), unbiased=False), torch.ones(10), atol=1e-3)
    assert Simulator(templates, SimulationConfig(box=BOX), negative=False).class_names == ['proc00', 'proc01', 'proc02']


def test_same_generator_state_same_output(templates):
    sim = Simulator(templates, SimulationConfig(box=BOX))
    labels = torch.arange(8) % len(sim.class_names)
    a, b, c = sim.batch(labels, gen(5)), sim.batch(labels, gen(5)), sim.batch(labels, gen(6))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1


def test_cpu_footprint_path_matches_full_box_path(templates):
    """The CPU samples only each particle's footprint; the GPU code path samples whole
    boxes. Both must give the same volumes (run the GPU path on the CPU)."""
    cfg = SimulationConfig(box=BOX, crowding_probability=1.0, membrane_probability=0.5, bead_probability=0.5)
    sim = Simulator(templates, cfg, membrane_bound=['proc00'])
    labels = torch.arange(10) % len(sim.class_names)
    a = sim.batch(labels, gen(1))
    sim._sparse = False
    b = sim.batch(labels, gen(1))
    assert (a - b).abs().max() < 0.02


# ------------------------------------------------------------------ physics
def test_missing_wedge_is_empty_of_signal_and_noise(templates):
    cfg = SimulationConfig(box=BOX, tilt_range=(-50.0, 60.0), tilt_steps=(2.0, 3.0))
    sim = Simulator(templates, cfg)
    x = sim.batch(torch.arange(8) % 4, gen(2)).double()
    power = torch.fft.fftn(x, dim=(1, 2, 3)).abs() ** 2
    f = torch.fft.fftfreq(BOX, d=1.0 / BOX).double()
    kz, _, kx = torch.meshgrid(f, f, f, indexing='ij')
    # angle of each voxel's central section in the XZ plane; tilt theta turns z towards +x
    ang = torch.rad2deg(torch.atan2(-kz, kx))
    ang = torch.remainder(ang + 90, 180) - 90
    edge = torch.where(ang > 60, ang - 60, torch.where(ang < -50, -50 - ang, torch.zeros_like(ang)))
    missing = torch.sqrt(kz ** 2 + kx ** 2) * torch.sin(torch.deg2rad(edge)) > 0.75
    assert missing.float().mean() > 0.15
    assert power[:, missing].sum() < 1e-9 * power.sum()
    inside = (edge == 0) & (kz.abs() + kx.abs() > 0)
    assert power[:, inside].mean() > 0.1 * power[:, 1:].mean()      # the rest is not empty


def test_bandlimit_mimics_data_resampled_from_a_coarser_voxel_size(templates):
    cfg = SimulationConfig(box=BOX, bandlimit_probability=1.0, bandlimit_voxel=(20.0, 20.0))
    x = Simulator(templates, cfg).batch(torch.arange(6) % 4, gen(5)).double()
    power = torch.fft.fftn(x, dim=(1, 2, 3)).abs() ** 2
    f = torch.fft.fftfreq(BOX, d=1.0 / BOX).double().abs()
    kz, ky, kx = torch.meshgrid(f, f, f, indexing='ij')
    beyond = torch.maximum(torch.maximum(kz, ky), kx) > BOX * 10.0 / (2 * 20.0) + 1e-6
    assert power[:, beyond].sum() < 1e-9 * power.sum()
    full = Simulator(templates, SimulationConfig(box=BOX, bandlimit_probability=0.0)).batch(
        torch.arange(6) % 4, gen(5)).double()
    assert (torch.fft.fftn(full, dim=(1, 2, 3)).abs() ** 2)[:, beyond].sum() > 0.2 * power.sum()


@pytest.mark.parametrize('reference', ['particle', 'box'])
def test_measured_snr_matches_requested(templates, reference):
    snr = 0.3
    sim = Simulator(templates, quiet(snr=(snr, snr), voxel_jitter=0.0, snr_reference=reference), negative=False)
    labels = torch.arange(12) % 3
    x, clean = sim.batch(labels, gen(3), return_clean=True)
    noise = x - clean
    measured = clean.var(dim=(1, 2, 3), unbiased=False) / noise.var(dim=(1, 2, 3), unbiased=False)
    if reference == 'particle':        # mean square over the particle's own volume
        measured = measured * BOX ** 3 / sim.effective_volume[labels]
    assert torch.allclose(measured, torch.full_like(measured, snr), rtol=0.2), measured


def test_spectra_give_the_exact_likelihood(templates):
    """The contract of ``batch(spectra=...)`` that the ideal-observer benchmark uses:
    the output is the normalised observed spectrum, the residual of the true
    hypothesis is noise of exactly the reported spread, and the draws do not
    depend on the labels, so the likelihood at the true pose names the true class."""
    sim = Simulator(templates, SimulationConfig(box=BOX, snr=(0.5, 0.5)))
    labels = torch.tensor([0, 1, 2, 3] * 3)
    g = gen(8)
    state = g.get_state()
    obs = {}
    x = sim.batch(labels, g, spectra=obs)
    y = obs['observed'].clone()
    y[:, 0] = 0
    y = torch.fft.irfftn(y.view(12, BOX, BOX, BOX // 2 + 1), s=(BOX,) * 3, dim=(1, 2, 3))
    assert torch.allclose(x, y / y.std(dim=(1, 2, 3), unbiased=False, keepdim=True), atol=1e-4)
    lone = {}
    Simulator(templates, quiet(snr=(0.5, 0.5))).batch(labels, gen(8), spectra=lone)
    positive = labels < 3
    assert torch.allclose(lone['clean'][positive], lone['particle'][positive], atol=1e-3)   # nothing else there
    assert lone['clean'][~positive].abs().max() < 1e-6                                       # a negative: nothing
    scores = []
    for c in range(len(sim.class_names)):
        g.set_state(state)
        h = {}
        sim.batch(torch.full_like(labels, c), g, spectra=h)
        live = h['noise_sd'] > 0
        live[:, 0] = False
        var = torch.where(live, h['noise_sd'].double() ** 2, 1.0)
        r2 = torch.where(live, (obs['observed'] - h['clean']).abs().double() ** 2 / var, 0.0)
        if c < 4:
            chi2 = r2[labels == c].sum(1) / live[labels == c].sum(1)
            assert torch.allclose(chi2, torch.ones_like(chi2), atol=0.05), chi2
        scores.append(-r2.sum(1) - torch.where(live, var.log(), 0.0).sum(1))
    assert torch.equal(torch.stack(scores, 1).argmax(1), labels)


def test_noise_does_not_depend_on_context(templates):
    """Neighbours add signal, not noise: with the same draws, the noise pattern is
    the same with and without them (only the output's overall scale changes)."""
    a = Simulator(templates, quiet(snr=(0.5, 0.5)), negative=False)
    b = Simulator(templates, dataclasses.replace(quiet(snr=(0.5, 0.5)), crowding_probability=1.0), negative=False)
    labels = torch.arange(6) % 3
    xa, ca = a.batch(labels, gen(4), return_clean=True)
    xb, cb = b.batch(labels, gen(4), return_clean=True)
    na, nb = (xa - ca).reshape(6, -1), (xb - cb).reshape(6, -1)
    corr = (na * nb).sum(1) / (na.norm(dim=1) * nb.norm(dim=1))
    assert (corr > 0.999).all(), corr
    assert ((ca - cb).reshape(6, -1).abs().max(1)[0] > 0.1).any()     # the context did change


def test_negative_has_no_centred_particle(templates):
    cfg = SimulationConfig(box=BOX, crowding_probability=1.0, contrast='bright')
    sim = Simulator(templates, cfg)
    neg = sim.class_names.index('negative')
    labels = torch.tensor([neg] * 12 + [0, 1, 2] * 4)
    _, clean = sim.batch(labels, gen(5), return_clean=True)
    core = torch.from_numpy(sphere(BOX, 3))
    frac = (clean[:, core] ** 2).sum(1) / (clean ** 2).sum(dim=(1, 2, 3))
    assert frac[:12].mean() < 0.2 * frac[12:].mean(), frac


def test_membrane_bound_class_carries_its_membrane(templates):
    sim = Simulator(templates, quiet(contrast='bright', snr=(1.0, 1.0)), membrane_bound=['proc00'], negative=False)
    labels = torch.tensor([0] * 6 + [3] * 6)                  # proc00, proc00_mb
    _, clean = sim.batch(labels, gen(6), return_clean=True)
    outside = torch.from_numpy(~sphere(BOX, float(sim.extent_radius[0]) + 2))
    frac = (clean[:, outside] ** 2).sum(1) / (clean ** 2).sum(dim=(1, 2, 3))
    assert frac[6:].min() > 2 * frac[:6].max(), frac


def test_membrane_bound_on_a_random_side_still_touches_it(templates):
    """mb_random_side: the bilayer meets the particle on another side of it, still
    touching it (the renderer maps template point p to centre + scale * rot @ p), and
    nothing but the _mb particles changes."""
    sim = Simulator(templates, quiet(mb_random_side=1.0), membrane_bound=['proc01'], negative=False)
    g = gen(3)
    rot = random_rotations(torch.randn(50, 4, generator=g))
    touch = torch.randint(len(SIDES), (50,), generator=g)
    scale, centre = 1 + 0.04 * torch.rand(50, generator=g), torch.full((50, 3), BOX / 2.0)
    contact, outward = sim.contact_plane(rot, torch.ones(50, dtype=torch.long), touch, centre, scale)
    d = torch.from_numpy(templates[1].density)
    solid = (torch.nonzero(d > 0.2).float() - (d.shape[0] - 1) / 2)            # template voxels (z, y, x)
    in_box = scale.view(-1, 1, 1) * torch.einsum('bij,pj->bpi', rot, solid)    # offsets from the centre
    reach = (in_box * outward.unsqueeze(1)).sum(-1).max(1)[0]                   # how far the particle goes
    plane = ((contact - centre) * outward).sum(-1)
    half = 0.5 * sim.config.membrane_thickness / sim.config.voxel_size
    assert torch.allclose(plane - half, reach + 0.5 * scale, atol=1e-4)         # touching, never cut
    assert torch.allclose(outward.norm(dim=1), torch.ones(50), atol=1e-5)
    assert reach.max() - reach.min() > 1.0                                     # other sides, other reach
    assert torch.equal(sim.sides[0, 0], torch.tensor([-1.0, 0.0, 0.0]))          # default side: the map's -z

    labels = torch.tensor([0, 1, 2, 3] * 4)                                     # proc01_mb = 3
    fixed = Simulator(templates, quiet(), membrane_bound=['proc01'], negative=False)
    _, a = fixed.batch(labels, gen(8), return_clean=True)
    _, b = sim.batch(labels, gen(8), return_clean=True)
    same = (a - b).flatten(1).abs().max(1)[0] == 0
    assert same[labels != 3].all() and not same[labels == 3].any()


# ------------------------------------------------------------------ to disk
def test_folder_labels_files_and_determinism(templates, tmp_path):
    cfg = SimulationConfig(box=BOX)
    out1, out2, out3 = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    res = simulate_to_folder(out1, templates, 3, cfg, seed=7, membrane_bound=['proc00'], batch_size=5)
    simulate_to_folder(out2, templates, 3, cfg, seed=7, membrane_bound=['proc00'], batch_size=5, montage=False)
    simulate_to_folder(out3, templates, 3, cfg, seed=8, membrane_bound=['proc00'], batch_size=5, montage=False)
    names = ['proc00', 'proc01', 'proc02', 'proc00_mb', 'negative']
    assert res['classes'] == names and res['n'] == 15
    labels = read_labels(out1 / 'labels.csv')
    mrcs = sorted(f for f in os.listdir(out1) if f.endswith('.mrc'))
    assert sorted(labels) == mrcs and len(mrcs) == 15
    assert sorted(labels.values()) == sorted(names * 3)
    assert (out1 / 'montage.png').stat().st_size > 1000
    assert sorted(os.listdir(out1 / 'templates')) == ['proc00.mrc', 'proc01.mrc', 'proc02.mrc']
    tpl, _ = read_volume(str(out1 / 'templates' / 'proc01.mrc'))
    np.testing.assert_allclose(tpl, templates[1].density)
    vol, vx = read_volume(str(out1 / mrcs[0]))
    assert vol.shape == (BOX, BOX, BOX) and vx == pytest.approx(10.0)
    def data(folder, f):
        with mrcfile.open(folder / f) as m:
            return m.data.tobytes()
    for f in mrcs:
        assert data(out1, f) == data(out2, f)               # byte-identical volumes
    assert any(data(out1, f) != data(out3, f) for f in mrcs)
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')]     # no temp leftovers


def test_bad_simulation_inputs(templates, tmp_path):
    bad = [dict(box=8), dict(tilt_range=(-95.0, 60.0)), dict(tilt_range=(30.0, 10.0)),
           dict(snr=(0.0, 1.0)), dict(contrast='grey'), dict(crowding_probability=2.0)]
    for kw in bad:
        with pytest.raises(DeepClusterError) as e:
            SimulationConfig(**kw).validate()
        assert '\n' not in str(e.value)
    with pytest.raises(DeepClusterError, match='nothere'):
        Simulator(templates, SimulationConfig(box=BOX), membrane_bound=['nothere'])
    with pytest.raises(DeepClusterError, match='voxel'):
        Simulator(procedural_templates(2, 8.0, seed=0), SimulationConfig(box=BOX))
    with pytest.raises(DeepClusterError, match='n-per-class'):
        simulate_to_folder(tmp_path / 'out', templates, 0, SimulationConfig(box=BOX))
    with pytest.raises(DeepClusterError):
        simulate_to_folder(tmp_path / 'out', templates, 2, SimulationConfig(box=BOX), membrane_bound=['zzz'])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------- CLI
def test_cli_end_to_end(tmp_path):
    out = tmp_path / 'sim'
    main(['-q', 'simulate', '--procedural', '2', '--n-per-class', '2', '--box', '16', '--seed', '1',
          '--out', str(out), '--membrane-bound', 'proc01', '--snr', '0.5', '2', '--contrast', 'bright',
          '--mb-random-side', '0.5'])
    labels = read_labels(out / 'labels.csv')
    assert sorted(set(labels.values())) == ['negative', 'proc00', 'proc01', 'proc01_mb']
    for f in labels:
        with mrcfile.open(out / f) as m:
            assert m.data.shape == (16, 16, 16) and m.voxel_size.x == pytest.approx(10.0)
    main(['-q', 'simulate', '--procedural', '1', '--n-per-class', '1', '--box', '16', '--no-negative',
          '--out', str(tmp_path / 'noneg')])
    assert set(read_labels(tmp_path / 'noneg' / 'labels.csv').values()) == {'proc00'}


@pytest.mark.parametrize('args, needle', [
    (['--procedural', '2', '--tilt-range', '-95', '60'], 'tilt range'),
    (['--procedural', '2', '--tilt-range', '40', '-40'], 'tilt range'),
    (['--procedural', '2', '--box', '8'], 'box'),
    (['--procedural', '2', '--n-per-class', '0'], 'n-per-class'),
    ([], 'no classes'),
    (['--structures', '/no/such/dir'], '/no/such/dir'),
    (['--procedural', '2', '--membrane-bound', 'ghost'], 'ghost'),
    (['--procedural', '2', '--mb-random-side', '2'], '--mb-random-side 2: must be within 0 and 1'),
])
def test_cli_errors_are_one_line_and_leave_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / 'sim'
    with pytest.raises(SystemExit) as e:
        main(['-q', 'simulate', '--out', str(out), '--box', '16'] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU')
def test_gpu_batch(templates):
    sim = Simulator(templates, SimulationConfig(box=BOX), device='cuda')
    g = torch.Generator(device='cuda').manual_seed(0)
    x = sim.batch(torch.arange(8, device='cuda') % 4, g)
    assert x.is_cuda and x.shape == (8, BOX, BOX, BOX) and torch.isfinite(x).all()
    g2 = torch.Generator(device='cuda').manual_seed(0)
    assert torch.allclose(x, sim.batch(torch.arange(8, device='cuda') % 4, g2), atol=1e-4)


# ------------------------------------------------------------ cellular scene
def test_binding_site_lobes_points_from_the_small_lobe_through_the_large(templates):
    from deepcluster.core.datamodel.simulate import binding_site
    from deepcluster.core.datamodel.structures import Template
    n = 31
    zz, yy, xx = np.indices((n, n, n)) - n // 2
    big = np.exp(-((zz - 0) ** 2 + (yy - 0) ** 2 + (xx - 4) ** 2) / 18.0)      # large lobe at +x
    small = 0.6 * np.exp(-((zz - 0) ** 2 + (yy - 0) ** 2 + (xx + 6) ** 2) / 8.0)
    t = Template('two', (big + small).astype(np.float32), 10.0)
    v = binding_site(t, 'lobes')                                               # (z, y, x)
    assert v[2] > 0.99, v
    assert np.allclose(binding_site(t, (0, 0, -1)), [-1, 0, 0])                # x,y,z in, z,y,x out
    assert np.allclose(binding_site(t, None), [-1, 0, 0])
    for bad in ('tunnel', (0, 0, 0), (1, float('nan'), 0)):
        with pytest.raises(DeepClusterError):
            binding_site(t, bad)


def test_cellular_membrane_bound_sits_off_its_membrane_at_its_site(templates):
    """The bilayer of an _mb particle is mb_gap beyond the particle along a side within
    mb_site_spread of its binding site; the classic scene still touches at -z."""
    cfg = SimulationConfig.for_scene('cellular', box=BOX)
    assert cfg.mb_gap == (30.0, 50.0) and cfg.negative_overlap > 0
    sim = Simulator(templates, cfg, membrane_bound={'proc01': (1.0, 0.0, 0.0)}, negative=False)
    site = sim.sides[1, 0]
    assert torch.allclose(site, torch.tensor([0.0, 0.0, 1.0]))                  # +x in z,y,x
    cone = sim.sides[1, sim._cone[1]]
    assert (np.degrees(np.arccos((cone @ site).clamp(-1, 1).numpy())) <= 25 + 1e-4).all()
    g = gen(4)
    rot = random_rotations(torch.randn(20, 4, generator=g))
    centre, scale = torch.full((20, 3), BOX / 2.0), torch.ones(20)
    gap = torch.full((20,), 4.0)
    touch = torch.zeros(20, dtype=torch.long)
    near, _ = sim.contact_plane(rot, torch.ones(20, dtype=torch.long), touch, centre, scale)
    far, outward = sim.contact_plane(rot, torch.ones(20, dtype=torch.long), touch, centre, scale, gap)
    assert torch.allclose(((far - near) * outward).sum(-1), gap, atol=1e-5)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    x = sim.batch(labels, gen(2))
    assert torch.isfinite(x).all() and x.shape == (12, BOX, BOX, BOX)


def test_cellular_negatives_are_crowded_cytosol(templates):
    """Negatives of the cellular scene have neighbours reaching into the centre, so
    their centre is not an empty hole the size of a particle."""
    labels = torch.full((64,), 3)                                               # negative
    centre = torch.from_numpy(sphere(BOX, 3))
    mass = {}
    for scene in ('classic', 'cellular'):
        cfg = SimulationConfig.for_scene(scene, box=BOX, membrane_probability=0.0, bead_probability=0.0,
                                         ice_amplitude=(0.0, 0.0))
        sim = Simulator(templates, cfg)
        _, clean = sim.batch(labels, gen(9), return_clean=True)
        mass[scene] = float(clean[:, centre].abs().mean())
    assert mass['cellular'] > 2 * mass['classic'], mass


def test_simulate_cli_scene_and_site_flags(tmp_path, capsys):
    out = tmp_path / 'sim'
    assert main([str(a) for a in ['-q', 'simulate', '--procedural', 2, '--membrane-bound', 'proc00',
                                  '--mb-site', 'proc00=lobes', '--scene', 'cellular', '--n-per-class', 2,
                                  '--box', BOX, '--out', out]]) == 0
    assert sorted(set(read_labels(str(out / 'labels.csv')).values())) == ['negative', 'proc00', 'proc00_mb', 'proc01']
    for bad in (['--mb-site', 'proc09=lobes'], ['--mb-site', 'proc00=1,2'], ['--mb-site', 'proc00']):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in ['-q', 'simulate', '--procedural', 2, '--membrane-bound', 'proc00',
                                   '--n-per-class', 1, '--box', BOX, '--out', tmp_path / 'bad']] + bad)
        assert e.value.code == 2
        assert '--mb-site' in capsys.readouterr().err
