"""Embedding: order, geometry (voxel size, box), streaming, bad inputs, CLI."""
import csv
import logging
import os

import mrcfile
import numpy as np
import pytest
import torch

from deepcluster.core import DeepClusterError
from deepcluster.core.model import network
from deepcluster.cli import main as cli_main
from deepcluster.core.inference.embed import embed_arrays, embed_files, prepare_batch
from deepcluster.core.model.network import build_model, default_config, load_model, save_model
from deepcluster.cli.train import parse_args
from deepcluster.core.model.train import train
from deepcluster.core.inference.volumes import fit_box, normalise, resample, write_volume
from deepcluster.tests.test_train import make_folder, render

BOX = 24


@pytest.fixture(scope='module')
def model_path(tmp_path_factory):
    """An untrained fast model (box 24, 10 Å) with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    cfg = default_config('fast', ['a', 'b', 'c'], box=BOX, voxel_size=10.0)
    m = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    p = str(tmp_path_factory.mktemp('model') / 'm.pt')
    save_model(p, m, cfg)
    return p


@pytest.fixture(scope='module')
def trained_path(tmp_path_factory):
    """A tiny model trained on three shapes at 10 Å, box 24 (~10 s)."""
    d = str(tmp_path_factory.mktemp('shapes'))
    make_folder(d, n_per_class=16, box=BOX, noise=0.3)
    out = str(tmp_path_factory.mktemp('trained') / 'trained.pt')   # not inside its input folder
    train(parse_args(['--data', d, '--out', out, '--steps', 30, '--batch-size', 12, '--lr', 3e-3,
                      '--val-every', 30, '--checkpoint-every', 0, '--device', 'cpu', '--no-plots']))
    return out


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / 'in'
    d.mkdir()
    paths = []
    for i, k in enumerate(['ring', 'ball', 'rod', 'ball', 'ring']):
        p = str(d / ('p%02d.mrc' % (4 - i)))   # names sort in reverse creation order
        write_volume(p, render(k, BOX, 10.0, rng, noise=0.3), 10.0)
        paths.append(p)
    return sorted(paths)


def _outputs(tmp_path):
    return sorted(p for p in os.listdir(tmp_path) if p.startswith(('feat', '.feat')))


def test_cli_folder_order_and_csv(files, model_path, tmp_path):
    out = str(tmp_path / 'feat.npy')
    folder = os.path.dirname(files[0])
    assert cli_main(['embed', folder, '--out', out, '--model', model_path, '--batch-size', '2']) == 0
    feats = np.load(out)
    assert feats.shape == (5, 32) and feats.dtype == np.float32
    with open(str(tmp_path / 'feat.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [r['file'] for r in rows] == files and [int(r['row']) for r in rows] == list(range(5))
    model, cfg = load_model(model_path)
    vols = [mrcfile.read(p) for p in files]
    ref = embed_arrays(vols, model, cfg, batch_size=5)
    assert np.allclose(feats, ref, atol=1e-5)
    # a .txt list keeps its own order; batch size does not matter
    lst = tmp_path / 'list.txt'
    lst.write_text('\n'.join(reversed(files)) + '\n')
    again = embed_files([str(lst)], model_path, batch_size=3, device='cpu')
    assert np.allclose(again, feats[::-1], atol=1e-5)


def test_prepare_batch_is_the_training_preprocessing():
    rng = np.random.default_rng(0)
    cfg = {'box': 24, 'voxel_size': 10.0}
    # even and odd n through the resampling operator (m >= box), the FFTs (m < box), no resampling
    for n, vx in [(24, 10.0), (30, 13.68), (18, 13.68), (25, 13.68), (31, 9.0), (32, 7.0), (20, 10.0)]:
        v = rng.normal(size=(n, n, n)).astype(np.float32)
        ref = normalise(fit_box(resample(v, vx, 10.0)[0], 24))
        got = prepare_batch([v], [vx], cfg)[0].numpy()
        assert np.allclose(got, ref, atol=2e-5), (n, vx)
    inv = prepare_batch([v], [10.0], cfg, invert_contrast=True)[0].numpy()
    assert np.allclose(inv, -ref, atol=2e-5)


def test_voxel_size_resampling(trained_path, tmp_path):
    """The same particles rendered at 13.68 Å embed close to their 10 Å versions."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(1)
    rots = Rotation.random(6, random_state=2)
    kinds = ['ball', 'rod', 'ring'] * 2
    at10, at13 = [], []
    for i, k in enumerate(kinds):
        for vx, n, lst in ((10.0, BOX, at10), (13.68, 18, at13)):
            p = str(tmp_path / ('%s_%d_%g.mrc' % (k, i, vx)))
            write_volume(p, render(k, n, vx, rng, noise=0, rotation=rots[i]), vx)
            lst.append(p)
    f10 = embed_files(at10, trained_path, device='cpu')
    f13 = embed_files(at13, trained_path, device='cpu')
    same = np.linalg.norm(f10 - f13, axis=1)
    d = np.linalg.norm(f10[:, None] - f10[None], axis=2)
    other = np.array([d[i][[j for j in range(6) if kinds[j] != kinds[i]]].min() for i in range(6)])
    assert (same < 0.25 * other).all(), (same, other)


def test_mixed_boxes_each_brought_to_model_geometry(model_path, tmp_path, caplog):
    rng = np.random.default_rng(2)
    a, b = str(tmp_path / 'a.mrc'), str(tmp_path / 'b.mrc')
    va = render('ring', 24, 10.0, rng)
    vb = render('rod', 30, 10.0, rng)
    write_volume(a, va, 10.0)
    write_volume(b, vb, 10.0)
    with caplog.at_level(logging.INFO):
        both = embed_files([a, b], model_path, device='cpu')
    assert 'sizes differ' in caplog.text
    model, cfg = load_model(model_path)
    one = embed_arrays([fit_box(vb, 24)], model, cfg)       # b cropped to the model box
    assert np.allclose(both[1], one[0], atol=1e-5)
    assert np.allclose(both[0], embed_files([a], model_path, device='cpu')[0], atol=1e-5)


def test_voxel_size_from_header_or_flag(model_path, tmp_path, capsys):
    rng = np.random.default_rng(3)
    p = str(tmp_path / 'nohdr.mrc')
    with mrcfile.new(p) as m:      # voxel size left at 0: unknown
        m.set_data(render('ball', BOX, 10.0, rng))
    out = str(tmp_path / 'feat.npy')
    with pytest.raises(SystemExit) as e:
        cli_main(['embed', p, '--out', out, '--model', model_path])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert 'nohdr.mrc' in err and '--voxel-size' in err and '\n' not in err
    assert _outputs(tmp_path) == []
    assert cli_main(['embed', p, '--out', out, '--model', model_path, '--voxel-size', '10']) == 0
    f10 = np.load(out)
    embed_files([p], model_path, voxel_size=13.68, out=out, device='cpu')
    assert not np.allclose(np.load(out), f10, atol=1e-3)   # the flag is used


@pytest.mark.filterwarnings('ignore::RuntimeWarning')   # mrcfile, writing the bad files
@pytest.mark.parametrize('kind', ['corrupt', 'nan', 'inf', 'stack'])
def test_bad_files_one_line_error_nothing_written(kind, files, model_path, tmp_path, capsys):
    bad = str(tmp_path / 'in' / 'zz_bad.mrc')
    if kind == 'corrupt':
        with open(bad, 'wb') as f:
            f.write(b'this is not an mrc file' * 50)
    elif kind == 'stack':
        with mrcfile.new(bad) as m:
            m.set_data(np.zeros((2, BOX, BOX, BOX), np.float32))   # a stack of 2 volumes
            m.voxel_size = 10.0
    else:
        v = np.zeros((BOX,) * 3, np.float32)
        v[3, 4, 5] = np.nan if kind == 'nan' else np.inf
        write_volume(bad, v, 10.0)
    out = str(tmp_path / 'feat.npy')
    with pytest.raises(SystemExit) as e:
        cli_main(['embed', os.path.dirname(bad), '--out', out, '--model', model_path, '--batch-size', '2'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'zz_bad.mrc' in err and '\n' not in err
    assert _outputs(tmp_path) == []


def test_bad_model_device_and_empty_inputs(files, model_path, tmp_path, monkeypatch, caplog):
    out = str(tmp_path / 'feat.npy')
    notours = tmp_path / 'weights.pt'
    torch.save({'a': torch.zeros(2)}, str(notours))
    with pytest.raises(DeepClusterError, match='weights.pt: not a deepcluster model'):
        embed_files(files, str(notours), out=out)
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a model' * 10)
    with pytest.raises(DeepClusterError, match='garbage.pt: not a deepcluster model file .not a PyTorch zip'):
        embed_files(files, str(garbage), out=out)
    pickled = tmp_path / 'pickled.pt'
    torch.save(torch.nn.Linear(2, 2), str(pickled))      # a whole network: refused unread
    with pytest.raises(DeepClusterError, match='pickled.pt: .*weights-only load refuses') as e:
        embed_files(files, str(pickled), out=out)
    assert len(str(e.value)) < 300
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(DeepClusterError, match='no .mrc files'):
        embed_files([str(empty)], model_path, out=out)
    lst = tmp_path / 'none.txt'
    lst.write_text('# nothing\n')
    with pytest.raises(DeepClusterError, match='names no volumes'):
        embed_files([str(lst)], model_path, out=out)
    with pytest.raises(DeepClusterError, match='no input'):
        embed_files([], model_path, out=out)
    monkeypatch.setattr(network, 'default_model_path', lambda: str(tmp_path / 'default.pt'))
    with pytest.raises(DeepClusterError, match='--model.*make model'):
        embed_files(files, None, out=out)
    assert _outputs(tmp_path) == []
    if not torch.cuda.is_available():
        with caplog.at_level(logging.WARNING):
            f = embed_files(files, model_path, device='cuda')
        assert 'no CUDA GPU' in caplog.text and f.shape == (5, 32)


def test_precision_auto_picks_bf16_only_where_the_cpu_has_it(files, model_path, monkeypatch, tmp_path):
    from deepcluster.core import device
    cpu = torch.device('cpu')
    monkeypatch.setattr(device, 'native_bf16_cpu', lambda: True)
    assert device.pick_dtype('auto', cpu) == torch.bfloat16
    monkeypatch.setattr(device, 'native_bf16_cpu', lambda: False)
    assert device.pick_dtype('auto', cpu) == torch.float32
    assert device.pick_dtype('bf16', cpu) == torch.bfloat16     # asked for: emulated if need be
    assert device.pick_dtype('fp32', cpu) == torch.float32
    with pytest.raises(DeepClusterError, match="--precision fp16: expected one of auto, fp32, bf16"):
        embed_files(files, model_path, out=str(tmp_path / 'feat.npy'), precision='fp16')
    assert _outputs(tmp_path) == []
    fp32 = embed_files(files, model_path, device='cpu', precision='fp32', progress=False)
    out = str(tmp_path / 'feat.npy')
    assert cli_main(['embed', *files, '--out', out, '--model', model_path, '--precision', 'bf16']) == 0
    cos = np.sum(fp32 * np.load(out), axis=1)      # both L2-normalised
    assert cos.min() > 0.99 and not np.array_equal(fp32, np.load(out))


def test_invert_contrast(files, model_path):
    model, cfg = load_model(model_path)
    vols = [mrcfile.read(p) for p in files]
    plain = embed_arrays(vols, model, cfg)
    flipped = embed_arrays([-v for v in vols], model, cfg, invert_contrast=True)
    assert np.allclose(plain, flipped, atol=1e-5)
    assert not np.allclose(plain, embed_arrays([-v for v in vols], model, cfg), atol=1e-3)


def test_contrast_auto_tells_dark_from_bright_and_matches_the_model(files, model_path, tmp_path):
    from deepcluster.core.inference.embed import data_contrast
    bright_dir = tmp_path / 'bright'
    bright_dir.mkdir()
    bright = []
    for p in files:
        q = str(bright_dir / os.path.basename(p))
        write_volume(q, -mrcfile.read(p), 10.0)
        bright.append(q)
    assert data_contrast(files)[0] == 'dark' and data_contrast(bright)[0] == 'bright'
    dark_auto = embed_files(files, model_path, device='cpu', contrast='auto', progress=False)
    bright_auto = embed_files(bright, model_path, device='cpu', contrast='auto', progress=False)
    np.testing.assert_allclose(dark_auto, bright_auto, atol=1e-5)     # inverted to the model's
    np.testing.assert_allclose(dark_auto, embed_files(files, model_path, device='cpu', contrast='dark',
                                                      progress=False), atol=1e-6)
    assert not np.allclose(dark_auto, embed_files(files, model_path, device='cpu', contrast='bright',
                                                  progress=False), atol=1e-3)
    with pytest.raises(DeepClusterError, match='--contrast grey'):
        embed_files(files, model_path, device='cpu', contrast='grey', progress=False)
