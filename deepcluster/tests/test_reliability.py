"""Reliability (issue 19, "data is sacred"): hostile and careless command lines.

Every case runs the CLI on a copy of a small project folder (tiny volumes, box 16,
a 2-channel model) and checks what must hold everywhere: no file deleted or
changed that the run was not asked to replace, no litter, no traceback or
segfault, a user error is one line with exit status 2, and exit 0 never comes
with a non-finite output. Most cases run in this process (fast); kills,
concurrency, pipes and segfault-prone paths run in subprocesses.
"""
import csv
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from deepcluster.cli import main
from deepcluster.core import DeepClusterError, outputs
from deepcluster.core.inference.features import load_features
from deepcluster.core.inference.volumes import write_volume
from deepcluster.core.model.network import build_model, default_config
from deepcluster.tests.test_train import make_folder

BOX = 16
TINY = ['--widths', '2', '2', '2', '2', '2', '--hidden', '4']
TRAIN = ['--steps', '2', '--batch-size', '4', '--val-per-class', '2', '--val-every', '1',
         '--no-plots', '--device', 'cpu', '--box', str(BOX)] + TINY
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


# ------------------------------------------------------------------ the project
def tiny_model(path, **cfg_over):
    torch.manual_seed(0)
    cfg = default_config('fast', ['a', 'b'], box=BOX, voxel_size=10.0)
    cfg['arch_params'].update(widths=[2] * 5, hidden=4)
    m = build_model(cfg)
    cfg.update(cfg_over)
    torch.save({'format': 'deepcluster-model/1', 'state_dict': m.state_dict(), 'config': cfg}, path)
    return path


def run_cli(*argv):
    """(exit status, stderr) of ``deepcluster ARGV`` in this process; any exception but
    SystemExit (a traceback for the user) fails the test."""
    logging.getLogger().handlers.clear()       # a fresh handler on this test's stdout
    import io
    err, old = io.StringIO(), sys.stderr
    sys.stderr = err
    try:
        main(['-q'] + [str(a) for a in argv])
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stderr = old
        logging.getLogger().handlers.clear()
    return rc, err.getvalue()


def snapshot(root):
    """{relative path: sha256 or 'dir'} of everything under root, hidden files too."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root)] = 'dir'
        for n in files:
            p = os.path.join(d, n)
            if os.path.islink(p) or not os.path.isfile(p):
                out[os.path.relpath(p, root)] = 'special'
                continue
            with open(p, 'rb') as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def litter(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root)
                  for n in ds + fs if '.dc-' in n)


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """data/ (a labelled folder), m.pt, f.npy + f.csv (embed), l.csv + l.json + pl/
    (cluster), user files that are nobody's output of ours."""
    root = tmp_path_factory.mktemp('project')
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_folder('data', n_per_class=3, box=BOX, kinds=('ball', 'rod', 'ring'))
        tiny_model('m.pt')
        assert run_cli('embed', 'data', '--model', 'm.pt', '--out', 'f.npy', '--contrast', 'dark')[0] == 0
        assert run_cli('cluster', 'f.npy', '--k', '2', '--out', 'l.csv', '--plots', 'pl',
                       '--embedding', 'pca')[0] == 0
        os.makedirs('userdir')
        open('userdir/notes.txt', 'w').write('precious\n')
        open('user.csv', 'w').write('a,b\n1,2\n')
        open('user.npy', 'wb').write(b'not ours')
        open('user.pt', 'wb').write(b'not a model')
    finally:
        os.chdir(cwd)
    return str(root)


@pytest.fixture
def work(project, tmp_path, monkeypatch):
    w = tmp_path / 'w'
    shutil.copytree(project, w, symlinks=True)
    monkeypatch.chdir(w)
    return str(w)


def refused(argv, root, must=None):
    """Run a command that must be refused: exit 2, one line, nothing changed."""
    before = snapshot(root)
    rc, err = run_cli(*argv)
    assert rc == 2, (argv, rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), (argv, err)
    assert 'Traceback' not in err
    if must:
        assert must in lines[0], (must, lines[0])
    assert snapshot(root) == before, argv     # no deletion, no change, no litter
    return lines[0]


# ------------------------------------------------ outputs that must be refused
EMB = ['embed', 'data', '--model', 'm.pt', '--contrast', 'dark']
CLU = ['cluster', 'f.npy', '--k', '2', '--embedding', 'pca']
TRN = ['train', '--data', 'data'] + TRAIN
SIM = ['simulate', '--procedural', '2', '--n-per-class', '2', '--box', str(BOX)]

REFUSED_OUTPUTS = {
    'simulate-out-cwd': (SIM + ['--out', '.'], 'current folder'),
    'simulate-out-empty': (SIM + ['--out', ''], 'empty'),
    'simulate-out-root': (SIM + ['--out', '/'], 'current folder'),
    'simulate-out-parent': (SIM + ['--out', '..'], 'current folder'),
    'simulate-out-is-input': (SIM + ['--structures', 'data', '--out', 'data'], 'input'),
    'simulate-out-holds-input': (SIM + ['--structures', 'data/ball_000.mrc', '--out', 'data'], None),
    'simulate-out-inside-input': (SIM + ['--structures', 'data', '--out', 'data/sim'], 'input folder'),
    'simulate-out-user-dir': (SIM + ['--out', 'userdir'], 'not an output'),
    'simulate-out-file': (SIM + ['--out', 'user.csv'], 'a file'),
    'simulate-out-other-command': (SIM + ['--out', 'pl'], 'not an output'),
    'embed-out-user-npy': (EMB + ['--out', 'user.npy'], 'not an output'),
    'embed-out-replaces-labels': (EMB + ['--out', 'data/labels.npy'], None),
    'embed-out-empty': (EMB + ['--out', ''], 'empty'),
    'embed-out-dir-npy': (EMB + ['--out', 'dirx.npy'], 'folder'),
    'embed-out-not-npy': (EMB + ['--out', 'x.txt'], '.npy'),
    'embed-out-inside-input': (EMB + ['--out', 'data/new.npy'], 'input folder'),
    'embed-out-csv-is-user': (EMB + ['--out', 'user.npy'], None),
    'embed-out-cwd': (EMB + ['--out', '.'], None),
    'cluster-out-is-features': (CLU + ['--out', 'f.npy'], '.csv'),
    'cluster-out-is-features-csv': (CLU + ['--out', 'f.csv'], None),
    'cluster-out-is-truth': (CLU + ['--out', 'data/labels.csv', '--truth', 'data/labels.csv'], None),
    'cluster-out-user-csv': (CLU + ['--out', 'user.csv'], 'not an output'),
    'cluster-plots-user-dir': (CLU + ['--out', 'new.csv', '--plots', 'userdir'], 'not an output'),
    'cluster-plots-cwd': (CLU + ['--out', 'new.csv', '--plots', '.'], 'current folder'),
    'cluster-plots-holds-out': (CLU + ['--out', 'pl/x.csv', '--plots', 'pl'], 'overlap'),
    'cluster-plots-is-input-folder': (CLU + ['--out', 'new.csv', '--plots', 'data'], None),
    'cluster-out-empty': (CLU + ['--out', ''], None),
    'train-out-labels': (TRN + ['--out', 'data/labels.csv'], None),
    'train-out-inside-data': (TRN + ['--out', 'data/model.pt'], 'input folder'),
    'train-out-features': (TRN + ['--out', 'f.npy'], '.pt'),
    'train-out-user-pt': (TRN + ['--out', 'user.pt'], 'not an output'),
    'train-work-dir-input': (TRN + ['--out', 'new.pt', '--work-dir', 'data'], None),
    'train-work-dir-user': (TRN + ['--out', 'new.pt', '--work-dir', 'userdir'], 'not an output'),
    'train-work-dir-cwd': (TRN + ['--out', 'new.pt', '--work-dir', '.'], 'current folder'),
    'train-out-empty': (TRN + ['--out', ''], None),
    'train-init-is-out': (TRN + ['--out', 'm.pt', '--init', 'm.pt'], 'input'),
    'demo-out-user-dir': (['demo', '--out', 'userdir'], 'not an output'),
    'demo-out-cwd': (['demo', '--out', '.'], 'current folder'),
    'demo-out-empty': (['demo', '--out', ''], 'empty'),
    'demo-out-file': (['demo', '--out', 'user.csv'], 'a file'),
}


@pytest.mark.parametrize('case', sorted(REFUSED_OUTPUTS))
def test_refused_outputs(work, case):
    os.makedirs('dirx.npy')
    argv, must = REFUSED_OUTPUTS[case]
    refused(argv, work, must)


# ---------------------------------------------------------------- numbers
NUMBERS = {
    'simulate': (SIM + ['--out', 'sim'], [
        ['--box', '0'], ['--box', '1000'], ['--box', '8'], ['--voxel-size', '0'], ['--voxel-size', '-1'],
        ['--voxel-size', 'inf'], ['--voxel-size', 'nan'], ['--voxel-size', '1e9'], ['--snr', 'nan', 'nan'],
        ['--snr', '0', '1'], ['--snr', 'inf', 'inf'], ['--tilt-range', 'nan', '60'],
        ['--tilt-range', '-100', '60'], ['--n-per-class', '0'], ['--procedural', '-1'],
        ['--batch-size', '0'], ['--seed', '-1'], ['--mb-random-side', '2'], ['--embedded', 'nope']]),
    'train': (TRN + ['--out', 'new.pt'], [
        ['--lr', 'nan'], ['--lr', '0'], ['--lr', '-1'], ['--lr', 'inf'], ['--widths', '0', '0', '0', '0', '0'],
        ['--val-per-class', '0'], ['--label-smoothing', '5'], ['--box', '0'], ['--voxel-size', '0'],
        ['--checkpoint-every', '-1'], ['--steps', '0'], ['--batch-size', '0'], ['--beta1', '1'],
        ['--hidden', '0'], ['--seed', '-1'], ['--max-minutes', 'nan'], ['--clip-grad', '-1'],
        ['--weight-decay', 'nan'], ['--warmup-steps', '-1'], ['--val-every', '0'],
        ['--max-memory-gb', 'nan'], ['--bandlimit-probability', '2'], ['--box', '18'],
        ['--data-voxel-size', 'inf'], ['--val-fraction', '1']]),
    'embed': (EMB + ['--out', 'g.npy'], [
        ['--voxel-size', 'inf'], ['--voxel-size', '1e9'], ['--voxel-size', '0'], ['--voxel-size', 'nan'],
        ['--threads', '100000'], ['--threads', '-1'], ['--batch-size', '0']]),
    'cluster': (CLU + ['--out', 'new.csv'], [
        ['--n-init', '0'], ['--seed', '-1'], ['--k', '0'], ['--k', 'abc'], ['--k-range', '0', '5'],
        ['--k', '1000']]),
}
NUMBER_CASES = [(cmd, i) for cmd, (_, flags) in NUMBERS.items() for i in range(len(flags))]


@pytest.mark.parametrize('cmd,i', NUMBER_CASES, ids=['%s%s' % (c, ''.join(NUMBERS[c][1][i]))
                                                     for c, i in NUMBER_CASES])
def test_numbers_out_of_range(work, cmd, i):
    base, flags = NUMBERS[cmd]
    refused(base + flags[i], work)


# ------------------------------------------------------------ corrupt inputs
def _mrc_bytes(data=np.zeros((BOX,) * 3, np.float32), voxel=10.0, mode=None):
    import mrcfile
    p = 'tmp_%d.mrc' % os.getpid()
    with mrcfile.new(p, overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel
    b = open(p, 'rb').read()
    os.remove(p)
    return b


def _bad_input(kind):
    """Make one bad embed input in bad/ and return the embed arguments."""
    os.makedirs('bad', exist_ok=True)
    if kind == 'text-named-mrc':
        open('bad/a.mrc', 'w').write('hello, I am text\n' * 100)
    elif kind == 'empty-mrc':
        open('bad/a.mrc', 'wb').close()
    elif kind == 'truncated-mrc':
        open('bad/a.mrc', 'wb').write(_mrc_bytes()[:1500])
    elif kind == 'complex-mrc':
        import mrcfile
        with mrcfile.new('bad/a.mrc') as m:
            m.set_data(np.ones((BOX,) * 3, np.complex64))
    elif kind == 'header-1e30':
        b = bytearray(_mrc_bytes(np.random.default_rng(0).normal(size=(BOX,) * 3).astype(np.float32)))
        b[40:44] = np.float32(1e30 * BOX).tobytes()            # cella.x -> 1e30 A/voxel
        open('bad/a.mrc', 'wb').write(bytes(b))
    elif kind == 'header-huge-dims':
        b = bytearray(_mrc_bytes())
        b[0:12] = np.array([100000] * 3, '<i4').tobytes()
        open('bad/a.mrc', 'wb').write(bytes(b))
    elif kind == 'nan-volume':
        v = np.zeros((BOX,) * 3, np.float32)
        v[3, 3, 3] = np.nan
        open('bad/a.mrc', 'wb').write(_mrc_bytes(v))
    elif kind == 'stack':
        write_volume('bad/ok.mrc', np.zeros((BOX,) * 3), 10.0)
        import mrcfile
        with mrcfile.new('bad/a.mrc') as m:
            m.set_data(np.zeros((2, 4, 4, 4), np.float32))
            m.header.ispg = 401
    elif kind == 'list-names-folder':
        open('bad/l.txt', 'w').write('../data\n')
        return ['bad/l.txt']
    elif kind == 'list-names-missing':
        open('bad/l.txt', 'w').write('nothere.mrc\n')
        return ['bad/l.txt']
    elif kind == 'list-binary':
        open('bad/l.txt', 'wb').write(b'\x00\x01\x02' * 50)
        return ['bad/l.txt']
    elif kind == 'list-empty':
        open('bad/l.txt', 'w').write('# nothing\n\n')
        return ['bad/l.txt']
    elif kind == 'folder-empty':
        os.makedirs('bad/empty')
        return ['bad/empty']
    elif kind == 'missing-input':
        return ['nothere']
    elif kind == 'empty-input':
        return ['']
    elif kind == 'not-mrc-suffix':
        open('bad/a.dat', 'w').write('x')
        return ['bad/a.dat']
    return ['bad']


BAD_INPUTS = ['text-named-mrc', 'empty-mrc', 'truncated-mrc', 'complex-mrc', 'header-1e30',
              'header-huge-dims', 'nan-volume', 'stack', 'list-names-folder', 'list-names-missing',
              'list-binary', 'list-empty', 'folder-empty', 'missing-input', 'empty-input',
              'not-mrc-suffix']
BAD_MESSAGES = {'text-named-mrc': 'not an MRC file', 'complex-mrc': 'complex', 'header-1e30': 'voxel size',
                'list-names-folder': 'is a folder', 'nan-volume': 'NaN', 'stack': 'stack'}


@pytest.mark.parametrize('kind', BAD_INPUTS)
def test_bad_embed_inputs(work, kind):
    args = _bad_input(kind)
    refused(['embed'] + args + ['--model', 'm.pt', '--out', 'g.npy', '--contrast', 'dark'], work,
            BAD_MESSAGES.get(kind))


def test_huge_values_embed_to_finite_features(work):
    """A finite volume scaled by 1e37 (issue: it embedded to NaN with exit 0)."""
    os.makedirs('big')
    for i, n in enumerate(sorted(os.listdir('data'))[:3]):
        if n.endswith('.mrc'):
            from deepcluster.core.inference.volumes import read_volume
            v = read_volume(os.path.join('data', n))[0]
            write_volume('big/%d.mrc' % i, v * np.float32(1e37), 10.0)
    rc, err = run_cli('embed', 'big', '--model', 'm.pt', '--out', 'big.npy', '--contrast', 'dark')
    assert rc == 0, err
    assert np.isfinite(np.load('big.npy')).all()


BAD_MODELS = {
    'text': lambda p: open(p, 'w').write('not a model'),
    'zip-not-torch': lambda p: zipfile.ZipFile(p, 'w').writestr('x', 'y'),
    'non-dict': lambda p: torch.save([1, 2, 3], p),
    'box-negative': lambda p: tiny_model(p, box=-16),
    'box-huge': lambda p: tiny_model(p, box=10 ** 6),
    'voxel-negative': lambda p: tiny_model(p, voxel_size=-5.0),
    'voxel-nan': lambda p: tiny_model(p, voxel_size=float('nan')),
    'voxel-zero': lambda p: tiny_model(p, voxel_size=0.0),
    'arch-unknown': lambda p: tiny_model(p, arch='resnet'),
    'classes-not-list': lambda p: tiny_model(p, class_names=7),
    'widths-zero': lambda p: tiny_model(p, arch_params={'widths': [0] * 5, 'hidden': 4}),
    'weights-mismatch': lambda p: tiny_model(p, arch_params={'widths': [4] * 5, 'hidden': 4}),
    'pickled-object': lambda p: torch.save({'format': 'deepcluster-model/1', 'x': __import__('argparse').Namespace(a=1)}, p),
    'truncated': lambda p: open(p, 'wb').write(open('m.pt', 'rb').read()[:300]),
}


@pytest.mark.parametrize('kind', sorted(BAD_MODELS))
def test_bad_model_files(work, kind):
    BAD_MODELS[kind]('bad.pt')
    refused(EMB[:2] + ['--model', 'bad.pt', '--out', 'g.npy', '--contrast', 'dark'], work)


BAD_CHECKPOINTS = {
    'text': lambda p: open(p, 'w').write('garbage'),
    'non-dict': lambda p: torch.save([1, 2], p),
    'missing-keys': lambda p: torch.save({'format': 'deepcluster-checkpoint/1'}, p),
    'pickled-object': lambda p: torch.save({'format': 'deepcluster-checkpoint/1', 'x': __import__('argparse').Namespace(a=1)}, p),
}


@pytest.mark.parametrize('kind', sorted(BAD_CHECKPOINTS))
def test_bad_resume_checkpoints(work, kind):
    os.makedirs('wd')
    outputs.mark_folder('wd', 'train')
    BAD_CHECKPOINTS[kind]('wd/checkpoint.pt')
    refused(TRN + ['--out', 'new.pt', '--work-dir', 'wd', '--resume'], work, 'checkpoint')


BAD_CLUSTER = {
    'features-text': lambda: open('f.npy', 'w').write('text'),
    'features-1d': lambda: np.save('f.npy', np.zeros(9, np.float32)),
    'features-nan': lambda: np.save('f.npy', np.full((9, 32), np.nan, np.float32)),
    'pair-mismatch': lambda: np.save('f.npy', np.ones((9, 32), np.float32)),
    'csv-binary': lambda: open('f.csv', 'wb').write(b'\x00' * 40),
    'truth-binary': lambda: open('t.csv', 'wb').write(b'\x00' * 40),
    'truth-wrong-columns': lambda: open('t.csv', 'w').write('a,b\n1,2\n'),
    'truth-names-unknown': lambda: open('t.csv', 'w').write('file,label\nzzz.mrc,a\n'),
    'hdbscan-few': lambda: np.save('f.npy', np.eye(3, 32, dtype=np.float32)) or
    open('f.csv', 'w').write('row,file\n0,a\n1,b\n2,c\n'),
}


@pytest.mark.parametrize('kind', sorted(BAD_CLUSTER))
def test_bad_cluster_inputs(work, kind):
    BAD_CLUSTER[kind]()
    argv = CLU + ['--out', 'new.csv']
    if kind.startswith('truth'):
        argv += ['--truth', 't.csv']
    if kind == 'hdbscan-few':
        argv = ['cluster', 'f.npy', '--method', 'hdbscan', '--out', 'new.csv']
    refused(argv, work, 'same run' if kind == 'pair-mismatch' else None)


# ---------------------------------------------------------- encodings (accepted)
ENCODINGS = {'latin-1': 'latin-1', 'utf-8-bom': 'utf-8-sig', 'utf-8': 'utf-8'}


@pytest.mark.parametrize('enc', sorted(ENCODINGS))
def test_text_files_in_any_common_encoding(work, enc):
    """List and truth files from Windows editors: Latin-1 or with a byte-order mark."""
    os.makedirs('caf\u00e9')
    names = sorted(n for n in os.listdir('data') if n.endswith('.mrc'))
    for n in names:
        shutil.copy(os.path.join('data', n), os.path.join('caf\u00e9', n))
    with open('l.txt', 'w', encoding=ENCODINGS[enc]) as f:
        f.write('\n'.join('caf\u00e9/' + n for n in names) + '\n')
    with open('t.csv', 'w', encoding=ENCODINGS[enc], newline='') as f:
        w = csv.writer(f)
        w.writerow(['file', 'label'])
        w.writerows([('caf\u00e9/' + n, 'cl\u00e4ss_' + n[:2]) for n in names])
    rc, err = run_cli('embed', 'l.txt', '--model', 'm.pt', '--out', 'g.npy', '--contrast', 'dark')
    assert rc == 0, err
    rc, err = run_cli('cluster', 'g.npy', '--k', '2', '--out', 'lab.csv', '--truth', 't.csv',
                      '--embedding', 'pca')
    assert rc == 0 and 'Traceback' not in err, err
    assert json.load(open('lab.json'))['metrics']['n'] == len(names)


# ------------------------------------------------------------ full disk, no rights
def _failing_write(monkeypatch, err_no, target='open'):
    import builtins
    real = builtins.open

    def fake(path, mode='r', *a, **kw):
        if ('w' in mode or 'a' in mode) and '.dc-tmp.' in os.fspath(path):
            raise OSError(err_no, os.strerror(err_no), os.fspath(path))
        return real(path, mode, *a, **kw)
    monkeypatch.setattr(builtins, 'open', fake)


WRITERS = {'embed': EMB + ['--out', 'f.npy'], 'cluster': CLU + ['--out', 'l.csv', '--plots', 'pl'],
           'simulate': SIM + ['--out', 'sim'], 'train': ['train', '--procedural', '2', '--out', 'm.pt'] + TRAIN}


@pytest.mark.parametrize('err_no', [28, 13, 30])     # ENOSPC, EACCES, EROFS
@pytest.mark.parametrize('cmd', sorted(WRITERS))
def test_write_errors_are_one_line_and_keep_the_old_output(work, monkeypatch, cmd, err_no):
    """A full disk or a folder turned read-only while writing: one line, the previous
    output (m.pt, f.npy + f.csv, l.csv + l.json + pl/) untouched, no temporaries."""
    _failing_write(monkeypatch, err_no)
    if cmd == 'train':
        os.makedirs('m_train')
        outputs.mark_folder('m_train', 'train')
    msg = refused(WRITERS[cmd], work)
    assert os.strerror(err_no) in msg


@pytest.mark.parametrize('case', ['voxel-1000', 'voxel-1e30', 'huge-extent'])
def test_absurd_structure_maps(work, case):
    os.makedirs('maps')
    v = np.zeros((20, 20, 20), np.float32)
    v[8:12, 8:12, 8:12] = 1
    if case == 'huge-extent':
        v = np.zeros((400, 40, 40), np.float32)
        v[200, 20, 20] = 1
    write_volume('maps/a.mrc', v, {'voxel-1000': 1000.0, 'voxel-1e30': 1e30, 'huge-extent': 10.0}[case])
    refused(SIM + ['--structures', 'maps', '--out', 'sim'], work)


def test_temporaries_of_older_versions_are_cleaned(work):
    """Killed runs of versions before this policy left .<out>.XXXXXXXX/ folders."""
    os.makedirs('.sim.ab12cd34/sim')
    old = time.time() - 3600
    os.utime('.sim.ab12cd34', (old, old))
    os.makedirs('.sim.notours1/keep')                 # something else: not ours, kept
    os.utime('.sim.notours1', (old, old))
    assert run_cli(*SIM + ['--out', 'sim'])[0] == 0
    assert not os.path.exists('.sim.ab12cd34') and os.path.isdir('.sim.notours1/keep')


def test_a_failed_demo_step_names_its_cause(tmp_path):
    from deepcluster.demo import _failure_cause
    err = tmp_path / 'run.stderr'
    err.write_text('Traceback (most recent call last):\n  ...\nerror: --out x: exists and is a file\n')

    class Prot:
        def getLogPaths(self):
            return [str(tmp_path / 'run.stdout'), str(err)]

        def getErrorMessage(self):
            return 'Protocol failed: Command ... returned non-zero exit status 2'
    cause = _failure_cause(Prot())
    assert cause.startswith('error: --out x: exists and is a file') and 'run.stderr' in cause


def test_unwritable_folder(work):
    os.makedirs('ro')
    os.chmod('ro', 0o500)
    try:
        if os.access('ro', os.W_OK):
            pytest.skip('running as root: permissions are not enforced')
        refused(EMB + ['--out', 'ro/g.npy'], work)
    finally:
        os.chmod('ro', 0o700)


# -------------------------------------------------- replacing our own outputs
def test_rerun_replaces_previous_outputs_of_the_same_command(work):
    before = snapshot(work)
    for argv in (EMB + ['--out', 'f.npy'], CLU + ['--out', 'l.csv', '--plots', 'pl'],
                 CLU + ['--out', 'l.csv', '--plots', 'pl']):
        rc, err = run_cli(*argv)
        assert rc == 0, err
    after = snapshot(work)
    assert set(after) == set(before) and not litter(work)
    assert all(after[k] == v for k, v in before.items() if k.startswith('data') or k.startswith('user'))
    load_features('f.npy')


def test_simulate_twice_and_a_failed_train_leaves_no_work_dir(work):
    for _ in range(2):
        rc, err = run_cli(*SIM + ['--out', 'sim'])
        assert rc == 0, err
    assert outputs.read_stamp('sim') == 'simulate' and not litter(work)
    refused(['train', '--data', 'sim', '--out', 'bad.pt', '--init', 'user.pt'] + TRAIN, work)
    assert not os.path.exists('bad_train')


def test_train_twice_replaces_its_model(work):
    for _ in range(2):
        rc, err = run_cli('train', '--procedural', '2', '--out', 't.pt', *TRAIN)
        assert rc == 0, err
    assert not litter(work) and os.path.isdir('t_train')


# ------------------------------------------------------ interrupted commits
def _replace_failing_on(monkeypatch, n):
    real, calls = os.replace, [0]

    def fake(a, b, *args, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise OSError(5, 'Input/output error (injected)', b)
        return real(a, b, *args, **kw)
    monkeypatch.setattr(os, 'replace', fake)


@pytest.mark.parametrize('n', [1, 2, 3])
@pytest.mark.parametrize('cmd', ['embed', 'cluster'])
def test_error_between_the_renames_rolls_back(work, monkeypatch, cmd, n):
    """The pair (embed: npy + csv; cluster: csv + json + plots) is committed with
    journalled renames; an error at any of them restores the previous pair."""
    _replace_failing_on(monkeypatch, n)
    argv = (EMB + ['--out', 'f.npy']) if cmd == 'embed' else (CLU + ['--out', 'l.csv', '--plots', 'pl'])
    refused(argv, work, 'injected')


def test_simulate_error_at_the_folder_swap_keeps_the_old_folder(work, monkeypatch):
    assert run_cli(*SIM + ['--out', 'sim'])[0] == 0
    monkeypatch.setattr(outputs, '_exchange', lambda a, b: (_ for _ in ()).throw(OSError(5, 'injected', b)))
    refused(SIM + ['--out', 'sim', '--seed', '1'], work, 'injected')


KILL_SCRIPT = r'''
import os, sys
n = int(sys.argv[1]); real = os.replace; calls = [0]
def fake(a, b, *x, **k):
    calls[0] += 1
    if calls[0] == n:
        os._exit(9)            # as a SIGKILL between the renames
    return real(a, b, *x, **k)
os.replace = fake
from deepcluster.cli import main
main(sys.argv[2:])
'''


def test_kill_between_the_renames_is_detected_and_repaired(work):
    """A SIGKILL between features.npy's and features.csv's renames: the reader refuses
    the mixed pair in one line; the next run rolls the commit back (the previous
    pair is whole again) and removes the litter."""
    old = snapshot(work)
    os.makedirs('data2')
    for n in sorted(os.listdir('data'))[:4]:
        shutil.copy(os.path.join('data', n), 'data2')
    before = snapshot(work)
    # rename 1: the journal; 2: features.npy; 3: features.csv
    p = subprocess.run([sys.executable, '-c', KILL_SCRIPT, '3', '-q', 'embed', 'data2', '--model', 'm.pt',
                        '--out', 'f.npy', '--contrast', 'dark'], env=ENV, capture_output=True, text=True)
    assert p.returncode == 9, p.stderr
    with pytest.raises(DeepClusterError, match='not from the same run'):
        load_features('f.npy')
    assert litter(work)
    outputs.clean_stale(work)                     # what the next run does first
    assert not litter(work)
    assert snapshot(work) == before and old['f.npy'] == before['f.npy']
    load_features('f.npy')


@pytest.mark.parametrize('cmd', ['simulate', 'embed'])
def test_sigkill_at_a_random_time_leaves_old_outputs_and_no_litter_after_next_run(work, cmd):
    if cmd == 'simulate':
        assert run_cli(*SIM + ['--out', 'sim'])[0] == 0
        argv = SIM + ['--out', 'sim', '--n-per-class', '40', '--seed', '3']
    else:
        argv = EMB + ['--out', 'f.npy']
    before = snapshot(work)
    proc = subprocess.Popen([sys.executable, '-m', 'deepcluster', '-q'] + argv, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    now = snapshot(work)
    for k, v in before.items():                   # the previous outputs: whole, or wholly new
        assert k in now, k
    if now != before:                             # the run finished before the kill
        return
    rc, err = run_cli(*(argv if cmd == 'embed' else SIM + ['--out', 'sim']))
    assert rc == 0, err
    assert not litter(work)


def test_sigterm_removes_the_temporaries_at_once(work):
    proc = subprocess.Popen([sys.executable, '-m', 'deepcluster', '-q'] + SIM +
                            ['--out', 'simt', '--n-per-class', '400'], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not litter(work):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    assert proc.returncode in (143, -15) and 'Traceback' not in err, err
    assert not litter(work) and not os.path.exists('simt')


def test_two_embeds_to_one_out_leave_a_consistent_pair(work):
    os.makedirs('half')
    for n in sorted(os.listdir('data'))[:5]:
        shutil.copy(os.path.join('data', n), 'half')
    procs = [subprocess.Popen([sys.executable, '-m', 'deepcluster', '-q', 'embed', src, '--model', 'm.pt',
                               '--out', 'c.npy', '--contrast', 'dark'], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for src in ('data', 'half')]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    X, files = load_features('c.npy')            # checks the hash: one run's npy with its csv
    assert len(X) == len(files) and not litter(work)


# -------------------------------------------------------- subprocess-only hazards
def test_identical_rows_with_tsne_plots_do_not_segfault(work):
    np.save('same.npy', np.ones((20, 32), np.float32))
    p = subprocess.run([sys.executable, '-m', 'deepcluster', '-q', 'cluster', 'same.npy', '--k', '2',
                        '--out', 'same.csv', '--plots', 'same_pl'], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stderr
    assert os.path.isfile('same_pl/embedding.png')


def test_a_pipe_named_mrc_does_not_hang_the_reader(work):
    os.makedirs('fifo')
    os.mkfifo('fifo/a.mrc')
    p = subprocess.run([sys.executable, '-m', 'deepcluster', '-q', 'embed', 'fifo', '--model', 'm.pt',
                        '--out', 'g.npy'], env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and 'not a regular file' in p.stderr and 'Traceback' not in p.stderr


# ------------------------------------------------ the commit itself (core/outputs)
def _folder(path, text):
    os.makedirs(path)
    open(os.path.join(path, 'x.txt'), 'w').write(text)


@pytest.mark.parametrize('fail', [False, True])
def test_folder_replacement_without_renameat2(tmp_path, monkeypatch, fail):
    """Where the atomic swap is not available the folder is moved aside and back under
    the journal; an error at the second rename puts the old folder back."""
    monkeypatch.setattr(outputs, '_exchange', lambda a, b: False)
    old, new = str(tmp_path / 'out'), str(tmp_path / 'new')
    _folder(old, 'old')
    _folder(new, 'new')
    if fail:
        _replace_failing_on(monkeypatch, 2)          # 1: the journal, 2: new -> out
        with pytest.raises(OSError):
            outputs.commit([(new, old)])
    else:
        outputs.commit([(new, old)])
    assert open(os.path.join(old, 'x.txt')).read() == ('old' if fail else 'new')
    assert not litter(str(tmp_path))


FOLDER_KILL = r'''
import os, sys
from deepcluster.core import outputs
outputs._exchange = lambda a, b: False
real = os.replace; calls = [0]
def fake(a, b, *x, **k):
    calls[0] += 1
    if calls[0] == 2:
        os._exit(9)            # killed with the old folder moved aside, the new not in place
    return real(a, b, *x, **k)
os.replace = fake
outputs.commit([(sys.argv[1], sys.argv[2])])
'''


def test_a_kill_with_the_old_folder_moved_aside_is_undone_by_the_next_run(tmp_path):
    old, new = str(tmp_path / 'out'), str(tmp_path / 'new')
    _folder(old, 'old')
    _folder(new, 'new')
    p = subprocess.run([sys.executable, '-c', FOLDER_KILL, new, old], env=ENV)
    assert p.returncode == 9 and not os.path.exists(old) and litter(str(tmp_path))
    outputs.clean_stale(str(tmp_path))
    assert open(os.path.join(old, 'x.txt')).read() == 'old' and not litter(str(tmp_path))


def test_live_temporaries_of_another_run_are_left_alone(tmp_path):
    """A concurrent run's temporaries (its pid is alive) are not ours to clean."""
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
    try:
        live = tmp_path / ('.out.dc-tmp.%d.abcd1234' % sleeper.pid)
        live.mkdir()
        outputs.clean_stale(str(tmp_path))
        assert live.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    outputs.clean_stale(str(tmp_path))
    assert not live.exists()


@pytest.mark.parametrize('which', ['_adapted.pt', '_adapt.json'])
def test_embed_adapt_refuses_a_user_file_where_its_adapted_model_goes(work, which):
    with open('new' + which, 'w') as f:
        f.write('the user\'s own file\n')
    refused(EMB + ['--adapt', 'bn', '--out', 'new.npy'], work, 'not an output')
