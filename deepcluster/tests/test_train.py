"""Training: learns, is deterministic, resumes exactly, writes a loadable model."""
import csv
import os

import numpy as np
import pytest
import torch

from deepcluster.core import DeepClusterError
from deepcluster.cli import main as cli_main
from deepcluster.core.model.network import load_model, read_model_file
from deepcluster.cli.train import parse_args
from deepcluster.core.model.train import train
from deepcluster.core.model.training_data import balanced_labels
from deepcluster.core.inference.volumes import write_labels, write_volume

SHAPES = ('ball', 'rod', 'ring')


def render(kind, box, voxel_size, rng, noise=0.5, rotation=None, edge=5.0):
    """A dark (negative) particle of a given kind, randomly oriented, plus Gaussian
    noise. Shapes are smooth functions of position in Å (soft edges ``edge`` Å wide),
    so the same particle can be rendered at any voxel size without aliasing."""
    from scipy.spatial.transform import Rotation
    c = (box - 1) / 2
    zyx = (np.mgrid[:box, :box, :box] - c) * voxel_size
    R = (rotation if rotation is not None else Rotation.random(random_state=rng)).as_matrix()
    p = np.moveaxis(zyx, 0, -1) @ R.T
    if kind == 'ball':
        d, r = np.linalg.norm(p, axis=-1), 45
    elif kind == 'rod':       # capsule along the first axis
        d, r = np.hypot(np.clip(np.abs(p[..., 0]) - 55, 0, None), np.hypot(p[..., 1], p[..., 2])), 18
    elif kind == 'ring':      # torus in the plane of the last two axes
        d, r = np.hypot(np.hypot(p[..., 1], p[..., 2]) - 45, p[..., 0]), 14
    else:
        raise ValueError(kind)
    v = 1 / (1 + np.exp(np.clip((d - r) / edge, -50, 50)))
    if noise:
        v = v - rng.normal(0, noise, v.shape) * v.max()
    return (-v).astype(np.float32)


def make_folder(path, n_per_class=30, box=16, voxel_size=10.0, noise=0.5, seed=0, kinds=SHAPES):
    """A labelled folder (labels.csv + .mrc files) of clearly different shapes."""
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    files, labels = [], []
    for i in range(n_per_class):
        for k in kinds:
            f = '%s_%03d.mrc' % (k, i)
            write_volume(os.path.join(path, f), render(k, box, voxel_size, rng, noise), voxel_size)
            files.append(f)
            labels.append(k)
    write_labels(os.path.join(path, 'labels.csv'), files, labels)
    return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp('labelled')))


def base_args(folder, out, *extra):
    return ['--data', folder, '--out', out, '--steps', 12, '--batch-size', 12, '--lr', 3e-3,
            '--val-every', 4, '--checkpoint-every', 4, '--device', 'cpu', '--seed', 3, '--no-plots', *extra]


def test_balanced_labels():
    g = torch.Generator().manual_seed(0)
    lab = balanced_labels(64, 5, g)
    counts = np.bincount(lab.numpy(), minlength=5)
    assert counts.sum() == 64 and counts.max() - counts.min() <= 1
    assert not torch.equal(lab, balanced_labels(64, 5, torch.Generator().manual_seed(1)))


def test_tiny_training_learns(folder, tmp_path):
    out = str(tmp_path / 'm.pt')
    train(parse_args(base_args(folder, out, '--steps', 40, '--val-every', 20, '--plots')))
    blob = torch.load(out, map_location='cpu', weights_only=True)   # the contract
    cfg = blob['config']
    assert cfg['class_names'] == sorted(SHAPES)
    assert cfg['arch'] == 'fast' and cfg['box'] == 16 and cfg['voxel_size'] == 10.0
    assert cfg['contrast'] == 'dark' and 'unit standard deviation' in cfg['normalisation']
    card = cfg['training']
    assert card['source'] == 'labelled folder' and card['n_files'] == 90 and card['seed'] == 3
    assert card['steps'] == 40 and card['hardware']['device'] == 'cpu' and '--data' in card['command']
    assert cfg['metrics']['val_acc'] >= 0.85, cfg['metrics']
    assert np.array(cfg['metrics']['confusion']).sum() == card['n_val']
    model, cfg2 = load_model(out)
    assert cfg2 == cfg and not model.training
    work = str(tmp_path / 'm_train')
    with open(os.path.join(work, 'train_log.csv')) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['step', 'loss', 'acc', 'val_loss', 'val_acc', 'lr', 'time']
    assert [int(r['step']) for r in rows] == [20, 40]
    assert os.path.isfile(os.path.join(work, 'training_curves.png'))
    assert os.path.isfile(os.path.join(work, 'confusion.png'))
    assert not os.path.exists(os.path.join(work, 'checkpoint.pt'))   # removed after success


class Interrupt(Exception):
    pass


def _weights(path):
    return read_model_file(path)[0]


def test_resume_after_interrupt_equals_uninterrupted(folder, tmp_path):
    full = str(tmp_path / 'full.pt')
    train(parse_args(base_args(folder, full)))

    cut = str(tmp_path / 'cut.pt')

    def stop(step):
        if step == 7:          # after the checkpoint at step 4, mid-interval
            raise Interrupt()
    with pytest.raises(Interrupt):
        train(parse_args(base_args(folder, cut)), on_step=stop)
    assert not os.path.exists(cut)
    assert os.path.isfile(str(tmp_path / 'cut_train' / 'checkpoint.pt'))
    train(parse_args(base_args(folder, cut, '--resume')))

    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = read_model_file(full)[1]['metrics']
    lb = read_model_file(cut)[1]['metrics']
    assert la['val_acc'] == lb['val_acc'] and la['val_loss'] == lb['val_loss']

    def log(p):
        with open(p) as f:
            return [{k: v for k, v in r.items() if k != 'time'} for r in csv.DictReader(f)]
    assert log(str(tmp_path / 'full_train' / 'train_log.csv')) == \
        log(str(tmp_path / 'cut_train' / 'train_log.csv'))


def test_seed_determines_run(folder, tmp_path):
    a, b, c = (str(tmp_path / n) for n in ('a.pt', 'b.pt', 'c.pt'))
    train(parse_args(base_args(folder, a, '--steps', 3, '--checkpoint-every', 0)))
    train(parse_args(base_args(folder, b, '--steps', 3, '--checkpoint-every', 0)))
    train(parse_args(base_args(folder, c, '--steps', 3, '--checkpoint-every', 0, '--seed', 4)))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_streamed_equals_in_memory(folder, tmp_path):
    """Data too big for --max-memory-gb is read per batch (prefetched): same training."""
    a, b = str(tmp_path / 'mem.pt'), str(tmp_path / 'stream.pt')
    train(parse_args(base_args(folder, a, '--steps', 4, '--checkpoint-every', 0)))
    train(parse_args(base_args(folder, b, '--steps', 4, '--checkpoint-every', 0, '--max-memory-gb', 0)))
    assert read_model_file(b)[1]['training']['in_memory'] is False
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5), k


def test_resume_with_other_settings_is_refused(folder, tmp_path):
    out = str(tmp_path / 'r.pt')
    with pytest.raises(Interrupt):
        train(parse_args(base_args(folder, out)), on_step=lambda s: (_ for _ in ()).throw(Interrupt())
              if s == 5 else None)
    with pytest.raises(DeepClusterError, match='different settings.*lr'):
        train(parse_args(base_args(folder, out, '--resume', '--lr', 1e-3)))


def test_deepfinder_arch_trains(folder, tmp_path):
    out = str(tmp_path / 'df.pt')
    train(parse_args(base_args(folder, out, '--arch', 'deepfinder', '--steps', 2, '--val-every', 2,
                               '--checkpoint-every', 0)))
    model, cfg = load_model(out)
    assert cfg['arch'] == 'deepfinder'
    assert model.features(torch.zeros(2, 16, 16, 16)).shape == (2, 32)


def test_cli_train_and_bad_inputs(folder, tmp_path, capsys):
    out = str(tmp_path / 'cli.pt')
    assert cli_main(['train', *map(str, base_args(folder, out, '--steps', 2, '--val-every', 1))]) == 0
    assert os.path.isfile(out)
    noval = str(tmp_path / 'noval.pt')       # no validation split: the last weights are kept
    train(parse_args(base_args(folder, noval, '--steps', 2, '--val-fraction', 0)))
    card = read_model_file(noval)[1]
    assert card['training']['n_val'] == 0 and card['metrics']['kept_step'] == 2

    bad = tmp_path / 'bad'
    bad.mkdir()
    write_labels(str(bad / 'labels.csv'), ['missing.mrc'], ['x'])
    with pytest.raises(SystemExit) as e:
        cli_main(['train', '--data', str(bad), '--out', str(tmp_path / 'x.pt'), '--steps', '1'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'missing.mrc' in err and 'does not exist' in err

    one = make_folder(str(tmp_path / 'one'), n_per_class=2, kinds=('ball',))
    with pytest.raises(DeepClusterError, match='at least 2 classes'):
        train(parse_args(['--data', one, '--out', str(tmp_path / 'y.pt'), '--steps', 1]))
    with pytest.raises(DeepClusterError, match='no training data'):
        train(parse_args(['--out', str(tmp_path / 'z.pt'), '--steps', 1]))
    assert not any(p.endswith('.pt') for p in os.listdir(tmp_path) if p in ('x.pt', 'y.pt', 'z.pt'))


def sim_args(out, *extra):
    return ['--procedural', 2, '--box', 16, '--voxel-size', 20, '--out', out, '--steps', 6,
            '--batch-size', 6, '--val-per-class', 2, '--val-every', 3, '--checkpoint-every', 3,
            '--lr', 1e-3, '--device', 'cpu', '--seed', 5, '--no-plots', *extra]


def test_on_the_fly_simulation_resumes_exactly(tmp_path):
    full, cut = str(tmp_path / 'full.pt'), str(tmp_path / 'cut.pt')
    assert cli_main(['train', *map(str, sim_args(full))]) == 0

    def stop(step):
        if step == 4:
            raise Interrupt()
    with pytest.raises(Interrupt):
        train(parse_args(sim_args(cut)), on_step=stop)
    train(parse_args(sim_args(cut, '--resume')))
    a, b = _weights(full), _weights(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cfg = read_model_file(full)[1]
    assert cfg['class_names'] == ['proc00', 'proc01', 'negative']
    assert cfg['box'] == 16 and cfg['voxel_size'] == 20.0 and cfg['contrast'] == 'dark'
    card = cfg['training']
    assert card['source'] == 'simulated on the fly' and card['procedural'] == 2
    assert card['simulation']['box'] == 16 and card['n_val'] == 6 and card['negative_class'] is True
    assert set(card['templates']) == {'proc00', 'proc01'}
    assert card['simulation']['max_shift'] == 1.0          # the data model's default picking error


def test_max_shift_sets_the_picking_error(tmp_path):
    out = str(tmp_path / 'rough.pt')
    train(parse_args(sim_args(out, '--steps', 2, '--max-shift', 2.5)))
    assert read_model_file(out)[1]['training']['simulation']['max_shift'] == 2.5
    with pytest.raises(DeepClusterError, match='--max-shift 4: must be within 0 and a quarter of the box'):
        parse_args(sim_args(out, '--max-shift', 4))


def test_simulation_flag_errors(tmp_path):
    with pytest.raises(DeepClusterError, match='--embedded nope'):
        train(parse_args(['--structures', make_folder(str(tmp_path / 'f'), n_per_class=1, box=16) + '/ball_000.mrc',
                          '--embedded', 'nope', '--box', 16, '--out', str(tmp_path / 'x.pt')]))
    with pytest.raises(DeepClusterError, match='not both'):
        parse_args(['--data', str(tmp_path), '--procedural', 2, '--out', str(tmp_path / 'x.pt')])


def test_init_fine_tunes_from_a_model(folder, tmp_path):
    first = str(tmp_path / 'first.pt')
    train(parse_args(base_args(folder, first, '--steps', 30)))
    acc_first = read_model_file(first)[1]['metrics']['val_acc']
    # same classes: every layer starts from the model, so one step keeps its accuracy
    tuned = str(tmp_path / 'tuned.pt')
    train(parse_args(base_args(folder, tuned, '--init', first, '--steps', 1, '--lr', 1e-6, '--val-every', 1)))
    assert read_model_file(tuned)[1]['metrics']['val_acc'] >= acc_first - 0.1
    enc = {k: v for k, v in _weights(first).items() if k.startswith('encoder.')}
    # other classes: the encoder is reused, the classification layer is new
    two = str(tmp_path / 'two')
    make_folder(two, n_per_class=6, kinds=('ball', 'rod'))
    other = str(tmp_path / 'other.pt')
    train(parse_args(base_args(two, other, '--init', first, '--steps', 1, '--lr', 1e-9, '--val-every', 1)))
    w = _weights(other)
    assert w['head.weight'].shape[0] == 2
    for k, v in enc.items():
        if v.is_floating_point() and 'running' not in k:
            assert torch.allclose(w[k], v, atol=1e-5), k
    # another fully connected width: the convolutions carry over, the rest is new
    wide = str(tmp_path / 'wide.pt')
    train(parse_args(base_args(folder, wide, '--init', first, '--hidden', 16, '--steps', 1, '--lr', 1e-9,
                               '--val-every', 1)))
    w, cfg = read_model_file(wide)
    assert cfg['arch_params']['hidden'] == 16 and w['embed.0.weight'].shape[0] == 16
    assert cfg['training']['init']['layers'] == 'convolutions'
    for k, v in enc.items():
        if v.is_floating_point() and 'running' not in k:
            assert torch.allclose(w[k], v, atol=1e-5), k
    with pytest.raises(DeepClusterError, match='architecture'):
        train(parse_args(base_args(folder, str(tmp_path / 'x.pt'), '--init', first, '--widths', 4, 8, 8, 8, 8)))
    with pytest.raises(DeepClusterError, match='--hidden'):
        train(parse_args(base_args(folder, str(tmp_path / 'x.pt'), '--hidden', 0)))


def test_time_budget_stops_with_an_annealed_model(folder, tmp_path):
    """--max-minutes: stop early, still validate and write the model; the cosine
    schedule has run out by the last step; the card tells how far it got."""
    import time as _time
    out = str(tmp_path / 'budget.pt')
    args = parse_args(base_args(folder, out, '--steps', 1000, '--val-every', 500, '--schedule', 'cosine',
                                '--max-minutes', 0.01))
    train(args, on_step=lambda s: _time.sleep(0.25))          # 0.6 s budget: a few steps
    card = read_model_file(out)[1]['training']
    with open(os.path.join(str(tmp_path / 'budget_train'), 'train_log.csv')) as f:
        rows = list(csv.DictReader(f))
    assert card['steps'] < 10 and card['steps_planned'] == 1000 and card['max_minutes'] == 0.01
    assert card['samples_seen'] == card['steps'] * 12
    assert [int(r['step']) for r in rows] == [card['steps']] and float(rows[-1]['lr']) < 1e-9
    assert not os.path.exists(os.path.join(str(tmp_path / 'budget_train'), 'checkpoint.pt'))
    with pytest.raises(DeepClusterError, match='--max-minutes'):
        parse_args(base_args(folder, out, '--max-minutes', 0))


def test_cellular_scene_and_binding_site_reach_the_simulator_and_the_card(tmp_path):
    from deepcluster.core.model.network import read_model_file
    out = str(tmp_path / 'cell.pt')
    train(parse_args(sim_args(out, '--steps', 2, '--scene', 'cellular', '--membrane-bound', 'proc00',
                              '--mb-site', 'proc00=0,0,1')))
    card = read_model_file(out)[1]['training']
    assert card['scene'] == 'cellular' and card['simulation']['mb_gap'] == [30.0, 50.0]
    assert card['binding_sites_zyx'] == {'proc00': [1.0, 0.0, 0.0]}
    with pytest.raises(DeepClusterError):
        parse_args(base_args(str(tmp_path), str(tmp_path / 'x.pt'), '--scene', 'cellular'))
