"""Architectures, inference folding and the model file contract."""
import os

import numpy as np
import pytest
import torch

from deepcluster.core import DeepClusterError
from deepcluster.core.model import network
from deepcluster.core.model.network import (build_model, default_config, inference_model, load_model,
                                      read_model_file, resolve_model_path, save_model)


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize('arch,box', [('fast', 40), ('fast', 24), ('deepfinder', 24)])
def test_shapes(arch, box):
    torch.manual_seed(0)
    cfg = default_config(arch, ['a', 'b', 'c'], box=box)
    m = build_model(cfg).eval()
    x = torch.randn(3, box, box, box)
    with torch.no_grad():
        logits, f = m.forward_both(x)
        assert logits.shape == (3, 3) and f.shape == (3, 32)
        assert m(x.unsqueeze(1)).shape == (3, 3)           # (B, 1, D, D, D) works too
        feats = m.features(x)
    assert feats.shape == (3, 32)
    if cfg['arch_params']['l2_features']:
        assert torch.allclose(feats.norm(dim=1), torch.ones(3), atol=1e-5)


def test_deepfinder_is_the_reference_encoder():
    m = build_model(default_config('deepfinder', ['a', 'b'], box=40))
    convs = [l.out_channels for l in m.encoder if isinstance(l, torch.nn.Conv3d)]
    pools = [l for l in m.encoder if isinstance(l, torch.nn.MaxPool3d)]
    assert convs == [32, 32, 48, 48, 64, 64, 64, 64] and len(pools) == 2
    assert m.embed[1].in_features == 64 * 10 ** 3
    with pytest.raises(DeepClusterError, match='divisible by 4'):
        build_model(default_config('deepfinder', ['a'], box=30))


def test_inference_model_matches_eval_model():
    torch.manual_seed(1)
    m = _randomise_bn(build_model(default_config('fast', ['a', 'b'], box=32))).eval()
    fused = inference_model(m)
    assert not any(isinstance(x, torch.nn.BatchNorm3d) for x in fused.modules())
    assert any(isinstance(x, torch.nn.BatchNorm3d) for x in m.modules())   # original untouched
    x = torch.randn(4, 1, 32, 32, 32)
    with torch.no_grad():
        a = m.features(x)
        b = fused.features(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_save_load_roundtrip_weights_only(tmp_path):
    torch.manual_seed(2)
    cfg = default_config('fast', ['x', 'y'], box=24, voxel_size=np.float64(12.5),
                         training={'steps': np.int64(5), 'shape': (1, 2)})
    m = _randomise_bn(build_model(cfg)).eval()
    p = str(tmp_path / 'sub' / 'm.pt')
    save_model(p, m, cfg)
    assert os.listdir(tmp_path / 'sub') == ['m.pt']          # no temp file left behind
    blob = torch.load(p, map_location='cpu', weights_only=True)
    assert set(blob) == {'format', 'state_dict', 'config'}
    c = blob['config']
    assert c['voxel_size'] == 12.5 and type(c['voxel_size']) is float
    assert c['training'] == {'steps': 5, 'shape': [1, 2]}
    for key in ('arch', 'arch_params', 'box', 'voxel_size', 'class_names', 'normalisation',
                'contrast', 'training', 'metrics', 'feature_dim'):
        assert key in c
    m2, c2 = load_model(p, 'cpu')
    x = torch.randn(2, 24, 24, 24)
    with torch.no_grad():
        assert torch.equal(m.features(x), m2.features(x))


def test_foreign_files_are_refused(tmp_path):
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(os.urandom(500))
    txt = tmp_path / 'notes.txt'
    txt.write_text('hello')
    other = tmp_path / 'other.pt'
    torch.save({'weights': torch.zeros(3)}, str(other))
    plain_sd = tmp_path / 'sd.pt'
    torch.save(build_model(default_config('fast', ['a'])).state_dict(), str(plain_sd))
    for p in (junk, txt, other, plain_sd, tmp_path / 'missing.pt'):
        with pytest.raises(DeepClusterError) as e:
            load_model(str(p))
        msg = str(e.value)
        assert str(p) in msg and '\n' not in msg
    # ours, but weights that do not fit the config
    cfg = default_config('fast', ['a', 'b'])
    p = str(tmp_path / 'mismatch.pt')
    save_model(p, build_model(default_config('fast', ['a', 'b', 'c'])), cfg)
    with pytest.raises(DeepClusterError, match='do not match'):
        load_model(p)
    assert read_model_file(p)[1]['class_names'] == ['a', 'b']


def test_default_model_path_and_missing_default(tmp_path, monkeypatch):
    assert network.default_model_path().endswith(os.path.join('deepcluster', 'models', 'default.pt'))
    monkeypatch.setattr(network, 'default_model_path', lambda: str(tmp_path / 'default.pt'))
    with pytest.raises(DeepClusterError, match='--model.*make model'):
        resolve_model_path(None)
    assert resolve_model_path('given.pt') == 'given.pt'


def test_shipped_models_by_name(tmp_path, monkeypatch):
    assert resolve_model_path('default') == network.default_model_path()
    assert resolve_model_path('accurate').endswith(os.path.join('deepcluster', 'models', 'accurate.pt'))
    with pytest.raises(DeepClusterError, match='huge: not a shipped model.*default, accurate'):
        network.shipped_model_path('huge')
    monkeypatch.chdir(tmp_path)            # a file of that name wins over the shipped model
    open('accurate', 'wb').close()
    assert resolve_model_path('accurate') == 'accurate'
