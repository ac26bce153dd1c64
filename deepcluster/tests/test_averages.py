"""core/datamodel/tomograms.py and core/analysis/averages.py: the simulator's true
poses in Scipion's convention, the tomogram layout, and the wedge-aware averages."""
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from deepcluster.core.analysis.averages import WedgeAverage, align, fsc, wedge_mask
from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator
from deepcluster.core.datamodel.structures import template_from_array
from deepcluster.core.datamodel.tomograms import (TomogramLayout, TomogramWriter, pose_matrices,
                                                  read_particles, write_particles)


def _asymmetric_template():
    z, y, x = np.indices((25, 25, 25)) - 12
    d = np.zeros((25, 25, 25), np.float32)
    for cz, cy, cx, r in [(0, 0, -8, 2.5), (0, 0, 8, 2.5), (0, 6, 8, 2), (5, 0, 0, 1.5)]:
        d += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    return template_from_array('asym', d, 10.0)


def _cc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_true_poses_align_the_simulated_particles_onto_their_template():
    n = 48
    t = _asymmetric_template()
    cfg = SimulationConfig(box=n, voxel_size=10.0)
    cfg.snr = (100.0, 100.0)
    sim = Simulator([t], cfg, 'cpu', negative=False)
    _, clean = sim.batch(torch.zeros(32, dtype=torch.long), torch.Generator().manual_seed(0),
                         return_clean=True)
    m = pose_matrices(*(v.numpy() for v in sim.last_poses))
    ref = np.zeros((n, n, n), np.float32)
    s, o = t.density.shape[0], n // 2 - t.density.shape[0] // 2
    ref[o:o + s, o:o + s, o:o + s] = t.density
    scores = {}
    for name, mats in [('true', m), ('shuffled', m[np.random.RandomState(0).permutation(32)]),
                       ('inverse', np.linalg.inv(m))]:
        acc = WedgeAverage(n, cfg.tilt_range)
        acc.add(clean.numpy(), mats)
        scores[name] = _cc(-acc.result(10.0)['average'], ref)      # dark protein
    assert scores['true'] > 0.85, scores
    assert scores['true'] > scores['inverse'] + 0.1 and scores['true'] > scores['shuffled'] + 0.3, scores


def test_align_inverts_a_known_pose_and_the_wedge_rotates_with_it():
    rng = np.random.RandomState(1)
    n = 24
    vol = rng.randn(n, n, n).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler('z', 90, degrees=True).as_matrix()   # exact on the grid
    # particle(r) = reference(M r)  <=>  aligned(s) = particle(M^-1 s) = reference(s)
    moved = align(vol[None], np.linalg.inv(m)[None])[0].numpy()
    back = align(moved[None], m[None])[0].numpy()
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(back[inner], vol[inner], atol=1e-4)
    acc = WedgeAverage(n, (-60, 60))
    w = acc.wedges(np.eye(4)[None])[0].numpy()
    full = np.fft.ifftshift(wedge_mask(n, (-60, 60)))[:, :, :n // 2 + 1]
    assert (w == full).mean() > 0.999
    assert 0.5 < w.mean() < 0.8


def test_halves_alternate_and_fsc_of_identical_maps_is_one():
    n = 16
    acc = WedgeAverage(n, (-90, 90))
    vols = np.random.RandomState(2).randn(5, n, n, n).astype(np.float32)
    acc.add(vols[:3], np.tile(np.eye(4), (3, 1, 1)))
    acc.add(vols[3:], np.tile(np.eye(4), (2, 1, 1)))
    assert acc.count == [3, 2]
    r = acc.result(5.0)
    assert r['n'] == 5 and r['coverage'] > 0.99
    np.testing.assert_allclose(fsc(vols[0], vols[0])[1:], 1.0, atol=1e-6)


def test_layout_coordinates_tomograms_and_particles_csv(tmp_path):
    lay = TomogramLayout(30, 32, 10.0, per_tomogram=12, binning=2)
    assert lay.n_tomograms == 3 and lay.shape == (32, 32, 48) and lay.tomogram_voxel_size == 20.0
    xyz = lay.coordinates(np.arange(30))
    assert xyz.min() >= 0 and (xyz < np.array(lay.shape[::-1])).all()
    # each box centre (voxel 16 of a 32 box) in binned voxels: (16 - 0.5) / 2
    np.testing.assert_allclose(xyz[0], [7.75, 7.75, 7.75])
    writer = TomogramWriter(lay, str(tmp_path / 'tomograms'))
    for i in range(30):
        writer.add(i, np.full((32, 32, 32), float(i), np.float32))
    files = writer.close()
    assert len(files) == 3
    import mrcfile
    with mrcfile.open(files[1]) as mrc:
        data = mrc.data
        assert abs(float(mrc.voxel_size.x) - 20.0) < 1e-4
    z, y, x = (int(v) for v in lay.slot(13))          # particle 13 = 2nd of the 2nd tomogram
    p = lay.pitch
    assert data[z * p + 3, y * p + 3, x * p + 3] == 13.0
    mats = pose_matrices(Rotation.random(30, random_state=3).as_matrix(), np.zeros((30, 3)))
    names = ['sub_%06d.mrc' % i for i in range(30)]
    write_particles(str(tmp_path / 'particles.csv'), names, mats, lay)
    back = read_particles(str(tmp_path / 'particles.csv'))
    assert back[names[13]]['tomogram'] == 'tomo_001'
    np.testing.assert_allclose(back[names[13]]['matrix'], mats[13], atol=1e-6)
    np.testing.assert_allclose(back[names[13]]['xyz'], xyz[13], atol=1e-3)
