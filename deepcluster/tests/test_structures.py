"""Templates from maps, atomic models, arrays and procedural shapes (fast)."""
import os

import mrcfile
import numpy as np
import pytest

from deepcluster.core import DeepClusterError
from deepcluster.core.datamodel.structures import (Template, load_structures, procedural_templates,
                                         template_from_array)
from deepcluster.tests import STRUCTURES

needs_structures = pytest.mark.skipif(not os.path.isdir(os.path.join(STRUCTURES, 'pdb')),
                                      reason='shared structures not available')


def blob(shape=(24, 24, 24), centre=None, sigma=3.0, offset=0.0):
    idx = np.indices(shape).astype(np.float64)
    centre = np.array(shape) / 2.0 if centre is None else np.asarray(centre, float)
    r2 = sum((idx[a] - centre[a]) ** 2 for a in range(3))
    return (np.exp(-r2 / (2 * sigma ** 2)) * 100 + offset).astype(np.float32)


def write_mrc(path, data, voxel_size=10.0):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.asarray(data, np.float32))
        m.voxel_size = voxel_size
    return str(path)


def invariants(t):
    """Rotation-invariant shape descriptors: effective volume, sorted inertia eigenvalues."""
    d = t.density.astype(np.float64)
    c = (d.shape[0] - 1) / 2
    x = np.indices(d.shape).reshape(3, -1) - c
    w = d.ravel() / d.sum()
    cov = (x * w) @ x.T
    return np.concatenate([[t.effective_volume], np.sort(np.linalg.eigvalsh(cov))])


# ----------------------------------------------------------------- conventions
def check_template(t, voxel_size):
    d = t.density
    assert d.dtype == np.float32 and d.ndim == 3 and len(set(d.shape)) == 1 and d.shape[0] % 2 == 1
    assert abs(d.max() - 1) < 1e-6 and d.min() >= 0
    assert t.voxel_size == voxel_size
    border = np.concatenate([d[0].ravel(), d[-1].ravel(), d[:, 0].ravel(), d[:, -1].ravel()])
    assert border.max() < 0.02                            # background ~ 0, particle inside
    idx = np.indices(d.shape).reshape(3, -1)
    com = (idx * d.ravel()).sum(1) / d.sum()
    assert np.allclose(com, (d.shape[0] - 1) / 2, atol=0.15)   # centred on the centre of mass


def test_map_is_resampled_centred_and_normalised(tmp_path):
    vol = blob((30, 30, 30), centre=(12.3, 16.0, 14.7), sigma=2.5, offset=7.0)  # off-centre, background 7
    t = load_structures([write_mrc(tmp_path / 'thing.mrc', vol, voxel_size=5.0)], 10.0)[0]
    assert t.name == 'thing' and t.membrane == 'none'
    check_template(t, 10.0)
    assert t.density.shape[0] < 30            # 5 Å -> 10 Å halves the size, then cropped


def test_non_cubic_map_is_padded(tmp_path):
    t = load_structures([write_mrc(tmp_path / 'slab.mrc', blob((16, 28, 22), sigma=2.0))], 10.0)[0]
    check_template(t, 10.0)


def test_in_memory_maps_and_templates():
    ts = load_structures([('a', blob(sigma=2.0), 10.0), ('b', blob(sigma=3.5), 8.0)], 10.0,
                         membrane={'b': 'attached'})
    assert [t.name for t in ts] == ['a', 'b'] and ts[1].membrane == 'attached'
    for t in ts:
        check_template(t, 10.0)
    again = load_structures(ts, 20.0)                     # Templates go through too, re-sampled
    assert again[0].density.shape[0] < ts[0].density.shape[0]
    assert template_from_array('c', blob(), 10.0).effective_volume > 10


# --------------------------------------------------------------- procedural
def test_procedural_is_deterministic_and_seeded():
    a, b = procedural_templates(6, 10.0, seed=3), procedural_templates(6, 10.0, seed=3)
    c = procedural_templates(6, 10.0, seed=4)
    assert [t.name for t in a] == ['proc%02d' % i for i in range(6)]
    for x, y in zip(a, b):
        assert np.array_equal(x.density, y.density)
    assert any(x.density.shape != z.density.shape or not np.allclose(x.density, z.density)
               for x, z in zip(a, c))


def test_procedural_classes_are_distinct_shapes():
    ts = procedural_templates(13, 10.0, seed=0)
    for t in ts:
        check_template(t, 10.0)
    sizes = [t.effective_volume for t in ts]
    assert max(sizes) / min(sizes) > 20                   # 5 to 40 nm
    mirrors = {i for i, t in enumerate(ts) if 'mirror' in t.source}
    assert mirrors, 'expected at least one chiral pair among 13 classes'
    inv = [invariants(t) for t in ts]
    for i in range(len(ts)):
        for j in range(i + 1, len(ts)):
            if j in mirrors and j == i + 1:
                # a chiral pair: same invariants, mirror-image densities, not the same map
                assert np.allclose(inv[i], inv[j], rtol=0.05)
                a, b = ts[i].density, ts[j].density
                n = min(a.shape[0], b.shape[0])
                ca, cb = (a.shape[0] - n) // 2, (b.shape[0] - n) // 2
                a, b = a[ca:ca + n, ca:ca + n, ca:ca + n], b[cb:cb + n, cb:cb + n, cb:cb + n]
                assert np.abs(a[:, :, ::-1] - b).max() < 0.05
                assert np.abs(a - b).max() > 0.3
            else:
                rel = np.abs(inv[i] - inv[j]) / np.maximum(np.abs(inv[i]), np.abs(inv[j]))
                assert rel.max() > 0.1, (ts[i].name, ts[j].name)


# ------------------------------------------------------------- atomic models
@needs_structures
def test_pdb_map_matches_the_eman_map():
    p = load_structures([os.path.join(STRUCTURES, 'pdb', '3qm1.pdb')], 10.0, assembly=False)[0]
    m = load_structures([os.path.join(STRUCTURES, 'maps_10A', '3qm1.mrc')], 10.0)[0]
    check_template(p, 10.0)
    n = min(p.density.shape[0], m.density.shape[0])
    crop = [(t.density.shape[0] - n) // 2 for t in (p, m)]
    a = p.density[crop[0]:crop[0] + n, crop[0]:crop[0] + n, crop[0]:crop[0] + n]
    b = m.density[crop[1]:crop[1] + n, crop[1]:crop[1] + n, crop[1]:crop[1] + n]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


@needs_structures
def test_biological_assembly_is_built():
    path = os.path.join(STRUCTURES, 'pdb', '1bxn.pdb')
    asu = load_structures([path], 10.0, assembly=False)[0]
    full = load_structures([path], 10.0)[0]
    assert full.density.sum() > 1.6 * asu.density.sum()          # L8S8 from the deposited L4S4


# ------------------------------------------------------------------- errors
def test_bad_inputs_raise_one_line_errors_naming_them(tmp_path):
    junk = tmp_path / 'junk.mrc'
    junk.write_bytes(b'not an mrc file at all' * 10)
    empty = tmp_path / 'empty'
    empty.mkdir()
    noatoms = tmp_path / 'noatoms.pdb'
    noatoms.write_text('HEADER    NOTHING\nEND\n')
    txt = tmp_path / 'notes.txt'
    txt.write_text('hello')
    flat = write_mrc(tmp_path / 'flat.mrc', np.zeros((20, 20, 20)))
    thin = write_mrc(tmp_path / 'thin.mrc', np.ones((2, 30, 30)))
    (tmp_path / 'd1').mkdir()
    (tmp_path / 'd2').mkdir()
    dup1 = write_mrc(tmp_path / 'd1' / 'same.mrc', blob())
    dup2 = write_mrc(tmp_path / 'd2' / 'same.mrc', blob())
    cases = [([str(junk)], 'junk.mrc'), ([str(empty)], 'empty'), ([str(noatoms)], 'noatoms.pdb'),
             ([str(txt)], 'notes.txt'), ([flat], 'flat.mrc'), ([thin], 'thin.mrc'),
             ([dup1, dup2], 'same'), ([str(tmp_path / 'missing.mrc')], 'missing.mrc'),
             ([('neg', -blob(), 10.0)], 'neg')]
    for inputs, needle in cases:
        with pytest.raises(DeepClusterError) as e:
            load_structures(inputs, 10.0)
        msg = str(e.value)
        assert needle in msg and '\n' not in msg, msg
    with pytest.raises(DeepClusterError, match='membrane'):
        Template('x', np.zeros((5, 5, 5), np.float32), 10.0, membrane='floating')
    with pytest.raises(DeepClusterError, match='at least 1'):
        procedural_templates(0, 10.0)
