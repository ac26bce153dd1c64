"""Stress benchmark of the output policy (issue 19, core/outputs.py): kill
simulate, embed, cluster and train at random moments (SIGKILL, or SIGTERM) while
they replace a previous output, then check, after every kill:

* the inputs are unchanged (hashes);
* the output is whole: the previous one, or a complete new one (readers that
  check the pairs accept it); a pair mixed by a kill between its renames is
  counted (it must be rolled back by the next run);
* the next run of the same command succeeds and leaves no temporaries of ours
  (``.dc-`` names) anywhere in the project folder.

Writes benchmarks/results/bench_stress.json. Tiny data (box 16, a 2-channel
model), so it runs in minutes on 2 cores: ``python benchmarks/bench_stress.py``.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from deepcluster.core import DeepClusterError          # noqa: E402
from deepcluster.core.analysis.cluster_files import read_cluster_labels  # noqa: E402
from deepcluster.core.inference.features import load_features  # noqa: E402
from deepcluster.core.inference.volumes import read_labels  # noqa: E402
from deepcluster.core.model.network import build_model, default_config, read_model_file, save_model  # noqa: E402
from deepcluster.core.outputs import read_stamp  # noqa: E402

RESULT = os.path.join(HERE, 'results', 'bench_stress.json')
BOX = '16'
TINY = ['--widths', '2', '2', '2', '2', '2', '--hidden', '4']
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def commands(seed):
    """argv of each command, writing over its previous output; inputs: data/, m.pt, fin.npy."""
    return {
        'simulate': ['simulate', '--procedural', '2', '--n-per-class', '40', '--box', BOX,
                     '--seed', str(seed), '--out', 'sim'],
        'embed': ['embed', 'data', '--model', 'm.pt', '--contrast', 'dark', '--batch-size', '8',
                  '--out', 'f.npy'],
        'cluster': ['cluster', 'fin.npy', '--k', '3', '--seed', str(seed), '--embedding', 'pca',
                    '--out', 'l.csv', '--plots', 'pl'],
        'train': ['train', '--procedural', '2', '--box', BOX, '--steps', '12', '--batch-size', '4',
                  '--val-per-class', '2', '--val-every', '3', '--checkpoint-every', '2', '--no-plots',
                  '--device', 'cpu', '--out', 't.pt', '--resume'] + TINY,
    }


def output_ok(cmd):
    """'' if the output of ``cmd`` is whole (its readers accept it), else why not."""
    try:
        if cmd == 'simulate':
            if read_stamp('sim') != 'simulate':
                return 'no stamp'
            rows = read_labels('sim/labels.csv')
            missing = [f for f in rows if not os.path.isfile(os.path.join('sim', f))]
            return 'missing %d files' % len(missing) if missing else ''
        if cmd == 'embed':
            X, files = load_features('f.npy')
            return '' if len(X) == len(files) == N_DATA else 'wrong size'
        if cmd == 'cluster':
            labels = read_cluster_labels('l.csv')
            return '' if len(labels) == N_DATA and read_stamp('pl') == 'cluster' else 'bad plots/labels'
        if cmd == 'train':
            read_model_file('t.pt')
            return ''
    except DeepClusterError as e:
        return str(e)
    return 'unknown command'


OUTPUTS = {'simulate': ['sim'], 'embed': ['f.npy', 'f.csv'], 'cluster': ['l.csv', 'l.json', 'pl'],
           'train': ['t.pt']}
INPUTS = ['data', 'm.pt', 'fin.npy', 'fin.csv']


def tree_hash(paths):
    h = {}
    for top in paths:
        if os.path.isfile(top):
            h[top] = hashlib.sha256(open(top, 'rb').read()).hexdigest()
        for d, ds, fs in os.walk(top):
            for n in fs:
                p = os.path.join(d, n)
                h[p] = hashlib.sha256(open(p, 'rb').read()).hexdigest()
    return h


def litter(root='.'):
    return [os.path.join(d, n) for d, ds, fs in os.walk(root) for n in ds + fs if '.dc-' in n]


def run(argv, check=True):
    p = subprocess.run([sys.executable, '-m', 'deepcluster', '-q'] + argv, env=ENV,
                       capture_output=True, text=True)
    if check and p.returncode:
        raise SystemExit('%s failed (%d): %s' % (' '.join(argv), p.returncode, p.stderr[-2000:]))
    return p


def setup(root):
    global N_DATA
    os.chdir(root)
    run(['simulate', '--procedural', '2', '--n-per-class', '10', '--box', BOX, '--out', 'data'])
    N_DATA = sum(n.endswith('.mrc') for n in os.listdir('data'))
    cfg = default_config('fast', ['a', 'b'], box=int(BOX), voxel_size=10.0)
    cfg['arch_params'].update(widths=[2] * 5, hidden=4)
    save_model('m.pt', build_model(cfg), cfg)
    run(['embed', 'data', '--model', 'm.pt', '--contrast', 'dark', '--out', 'fin.npy'])
    durations = {}
    for cmd, argv in commands(0).items():
        t = time.time()
        run(argv)
        durations[cmd] = time.time() - t
    return durations


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--kills', type=int, default=52)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=RESULT)
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out)
    rng = random.Random(a.seed)
    root = tempfile.mkdtemp(prefix='bench_stress_')
    cwd = os.getcwd()
    t_start = time.time()
    rows, cmds, durations = [], [], {}
    try:
        durations.update(setup(root))
        print('one run of each (s): %s' % {k: round(v, 1) for k, v in durations.items()}, flush=True)
        inputs = tree_hash(INPUTS)
        cmds.extend(durations)
        for i in range(a.kills):
            cmd = cmds[i % len(cmds)]
            sig = signal.SIGTERM if rng.random() < 0.3 else signal.SIGKILL
            # half the kills at a random moment of the run (much of a short run is start-up),
            # half at a random moment once it writes (its temporaries exist): the commit points
            when = 'writing' if i % 2 else 'random'
            before = tree_hash(OUTPUTS[cmd])
            t0 = time.time()
            proc = subprocess.Popen([sys.executable, '-m', 'deepcluster', '-q'] + commands(i + 1)[cmd],
                                    env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if when == 'random':
                time.sleep(rng.uniform(0.1, 1.05) * durations[cmd])
            else:
                while proc.poll() is None and not litter() and time.time() - t0 < 3 * durations[cmd]:
                    time.sleep(0.001)
                time.sleep(rng.choice([0.0, rng.uniform(0, 0.005), rng.uniform(0, 0.05), rng.uniform(0, 1.0)]))
            delay = time.time() - t0
            temporaries = bool(litter())
            finished = proc.poll() is not None
            proc.send_signal(sig)
            err = proc.communicate()[1]
            after = tree_hash(OUTPUTS[cmd])
            whole = output_ok(cmd)
            row = {'i': i, 'command': cmd, 'signal': sig.name, 'when': when, 'delay_s': round(delay, 2),
                   'finished_before_signal': finished, 'temporaries_at_signal': temporaries,
                   'rc': proc.returncode, 'traceback': 'Traceback' in err,
                   'inputs_unchanged': tree_hash(INPUTS) == inputs,
                   'old_output_intact': after == before, 'output_whole': whole == '',
                   'why_not_whole': whole, 'litter_after_kill': len(litter()),
                   'litter_names_after_kill': [os.path.basename(p) for p in litter()][:6],
                   'stderr_tail': err[-1500:] if 'Traceback' in err else ''}
            p = run(commands(i + 1)[cmd], check=False)          # the next run
            row.update(rerun_rc=p.returncode, rerun_traceback='Traceback' in p.stderr,
                       litter_after_rerun=litter(), output_whole_after_rerun=output_ok(cmd) == '')
            rows.append(row)
            write_result(out, rows, cmds, durations, t_start, final=False)
            print('%2d %-8s %-7s %-7s %5.2fs temps=%d intact=%d whole=%d rerun=%d litter=%d' % (
                i, cmd, sig.name, when, delay, temporaries, row['old_output_intact'], row['output_whole'],
                p.returncode, len(row['litter_after_rerun'])), flush=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)
    summary = write_result(out, rows, cmds, durations, t_start, final=True)
    print(json.dumps(summary, indent=1))
    if not summary['passed']:
        sys.exit('bench_stress: the output policy failed (see %s)' % out)


def write_result(out, rows, cmds, durations, t_start, final):
    """The JSON, rewritten after every kill (so a long run shows where it is)."""
    killed = [r for r in rows if not r['finished_before_signal']]
    summary = {
        'kills': len(rows), 'killed_while_running': len(killed),
        'by_command': {c: sum(r['command'] == c for r in rows) for c in cmds},
        'by_signal': {s: sum(r['signal'] == s for r in rows) for s in ('SIGKILL', 'SIGTERM')},
        'with_temporaries_at_signal': sum(r['temporaries_at_signal'] for r in rows),
        'at_random_moments': sum(r['when'] == 'random' for r in rows),
        'while_writing': sum(r['when'] == 'writing' for r in rows),
        'inputs_modified': sum(not r['inputs_unchanged'] for r in rows),
        'outputs_not_whole_after_kill': sum(not r['output_whole'] for r in rows),
        'old_output_intact': sum(r['old_output_intact'] for r in rows),
        'new_output_whole': sum(r['output_whole'] and not r['old_output_intact'] for r in rows),
        'tracebacks': sum(r['traceback'] or r['rerun_traceback'] for r in rows),
        'rerun_failures': sum(r['rerun_rc'] != 0 for r in rows),
        'outputs_not_whole_after_rerun': sum(not r['output_whole_after_rerun'] for r in rows),
        'litter_after_rerun': sum(bool(r['litter_after_rerun']) for r in rows),
        'sigterm_litter_at_once': sum(r['litter_after_kill'] > 0 for r in rows if r['signal'] == 'SIGTERM'),
        'one_run_seconds': {k: round(v, 2) for k, v in durations.items()},
        'seconds': round(time.time() - t_start, 1), 'complete': final,
    }
    ok = (summary['inputs_modified'] == summary['tracebacks'] == summary['rerun_failures']
          == summary['outputs_not_whole_after_rerun'] == summary['litter_after_rerun'] == 0)
    summary['passed'] = ok
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + '.tmp', 'w') as f:
        json.dump({'summary': summary, 'kills': rows}, f, indent=1)
    os.replace(out + '.tmp', out)
    return summary


if __name__ == '__main__':
    main()
