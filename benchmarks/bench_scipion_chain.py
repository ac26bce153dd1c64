"""The Scipion chain at scale: simulate -> classify as headless Scipion protocols,
against the CLI doing the same work (simulate with tomograms, embed, cluster with
the ground truth and the figures), at 10,000 and 50,000 subtomograms: wall time
per step and peak memory (resident set of the whole process tree, sampled).

    python benchmarks/bench_scipion_chain.py [--sizes 10000 50000] [--parts cli scipion]

Targets (issue 17): the classify protocol within 1.5x the CLI's embed + cluster,
the simulate protocol within 1.5x the CLI's simulate, memory flat in N.
Each (size, part) merges into benchmarks/results/bench_scipion_chain.json, so the
parts can run as separate processes; bench_scipion_chain.png draws them.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
OUT = os.path.join(RESULTS, 'bench_scipion_chain.json')
sys.path.insert(0, REPO)

PROCEDURAL = 9            # + negative: 10 classes
PER_TOMOGRAM, BINNING = 200, 2


class PeakRSS:
    """Peak resident memory (MB) of a process and all its children, sampled every 0.2 s."""

    def __init__(self, pid=None):
        self.proc = psutil.Process(pid or os.getpid())
        self.peak, self._stop = 0.0, threading.Event()
        self._own = pid is None

    def _sample(self):
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                if self._own and p.pid == self.proc.pid:
                    continue                      # the driver itself (an import of pyworkflow)
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total / 2 ** 20)

    def __enter__(self):
        def loop():
            while not self._stop.wait(0.2):
                self._sample()
        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_cli(args, log):
    cmd = [sys.executable, '-m', 'deepcluster'] + [str(a) for a in args]
    t0 = time.time()
    with open(log, 'a') as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                             env=dict(os.environ, PYTHONUNBUFFERED='1'))
        with PeakRSS(p.pid) as mem:
            rc = p.wait()
    if rc:
        raise SystemExit('%s failed (rc %d): see %s' % (' '.join(cmd), rc, log))
    return dict(seconds=round(time.time() - t0, 2), peak_mb=round(mem.peak, 1))


def bench_cli(n, work, box):
    per_class = n // (PROCEDURAL + 1)
    d = os.path.join(work, 'cli_%d' % n)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    log = os.path.join(d, 'cli.log')
    sim = os.path.join(d, 'sim')
    res = {'simulate': run_cli(['simulate', '--procedural', PROCEDURAL, '--n-per-class', per_class,
                                '--box', box, '--tomograms', PER_TOMOGRAM, BINNING, '--seed', 0,
                                '--out', sim], log)}
    feats = os.path.join(d, 'features.npy')
    res['embed'] = run_cli(['embed', sim, '--out', feats, '--adapt', 'none'], log)   # as the protocol here
    res['cluster'] = run_cli(['cluster', feats, '--k', PROCEDURAL + 1, '--out', os.path.join(d, 'labels.csv'),
                              '--truth', os.path.join(sim, 'labels.csv'), '--plots', os.path.join(d, 'plots')],
                             log)
    res['embed+cluster'] = dict(seconds=round(res['embed']['seconds'] + res['cluster']['seconds'], 2),
                                peak_mb=max(res['embed']['peak_mb'], res['cluster']['peak_mb']))
    res['n'] = per_class * (PROCEDURAL + 1)
    shutil.rmtree(sim, ignore_errors=True)
    return res


def bench_scipion(n, work, box):
    os.environ.setdefault('SCIPION_HOME', os.path.join(work, 'scipion_home'))
    os.makedirs(os.environ['SCIPION_HOME'], exist_ok=True)
    from deepcluster import headless
    headless.configure()
    from pyworkflow.project import Manager
    from deepcluster.protocols import ProtDeepClusterClassify, ProtDeepClusterSimulate
    from deepcluster.protocols.protocol_cluster import K_FIXED
    per_class = n // (PROCEDURAL + 1)
    name = 'bench_chain_%d' % n
    manager = Manager()
    if manager.hasProject(name):
        manager.deleteProject(name)
    project = manager.createProject(name)
    cwd = os.getcwd()
    os.chdir(project.path)
    try:
        def launch(prot):
            t0 = time.time()
            with PeakRSS() as mem:
                project.launchProtocol(prot, wait=True)
            prot = project.getProtocol(prot.getObjId())
            if prot.isFailed():
                raise SystemExit('%s failed: %s (logs in %s)' % (prot.getRunName(), prot.getErrorMessage(),
                                                                  prot.getLogPaths()))
            steps = {}
            for s in prot.loadSteps():
                steps[s.funcName.get()] = round(s.getElapsedTime().total_seconds(), 2)
            return prot, dict(seconds=round(time.time() - t0, 2), peak_mb=round(mem.peak, 1), steps=steps)

        sim = project.newProtocol(ProtDeepClusterSimulate, procedural=PROCEDURAL, nPerClass=per_class,
                                  boxSize=box, perTomogram=PER_TOMOGRAM, tomoBinning=BINNING, seed=0,
                                  useGpu=False)
        sim, rsim = launch(sim)
        clf = project.newProtocol(ProtDeepClusterClassify, kMode=K_FIXED, numberOfClasses=PROCEDURAL + 1,
                                  useGpu=False)
        if clf.hasAttribute('adapt'):
            clf.adapt.set(0)          # 'none', as the CLI's embed here: the same work on both sides
        clf.inputSubtomograms.set(sim)
        clf.inputSubtomograms.setExtended('subtomograms')
        clf, rclf = launch(clf)
        res = dict(simulate=rsim, classify=rclf, n=sim.subtomograms.getSize(),
                   averages=clf.averages.getSize() if hasattr(clf, 'averages') else 0)
    finally:
        os.chdir(cwd)
    manager.deleteProject(name)
    return res


def merge(n, part, res, box):
    data = json.load(open(OUT)) if os.path.exists(OUT) else {}
    entry = data.setdefault(str(n), {})
    entry[part] = res
    entry['box'] = box
    if 'cli' in entry and 'scipion' in entry:
        cli, sc = entry['cli'], entry['scipion']
        entry['ratios'] = dict(
            simulate=round(sc['simulate']['seconds'] / cli['simulate']['seconds'], 2),
            classify_vs_embed_cluster=round(sc['classify']['seconds'] / cli['embed+cluster']['seconds'], 2))
    data['_about'] = ('Scipion chain (simulate -> classify, headless protocols) vs the CLI doing the same '
                      'work, box %d, %d classes, tomograms of %d particles binned %dx; seconds are wall '
                      'time, peak_mb the peak resident memory of the process tree (2 shared CPU cores)'
                      % (box, PROCEDURAL + 1, PER_TOMOGRAM, BINNING))
    os.makedirs(RESULTS, exist_ok=True)
    with open(OUT + '.tmp', 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(OUT + '.tmp', OUT)
    plot(data)
    return data


def plot(data):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    sizes = sorted(int(k) for k in data if k.isdigit() and 'cli' in data[k] and 'scipion' in data[k])
    if not sizes:
        return
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    w = 0.35
    for i, n in enumerate(sizes):
        e = data[str(n)]
        cli, sc = e['cli'], e['scipion']
        ax1.bar(i - w / 2, cli['simulate']['seconds'], w, color='#4c72b0', label='CLI' if i == 0 else None)
        ax1.bar(i + w / 2, sc['simulate']['seconds'], w, color='#dd8452', label='protocol' if i == 0 else None)
        ax2.bar(i - w / 2, cli['embed']['seconds'], w, color='#4c72b0', label='CLI embed' if i == 0 else None)
        ax2.bar(i - w / 2, cli['cluster']['seconds'], w, bottom=cli['embed']['seconds'], color='#8fb0de',
                label='CLI cluster' if i == 0 else None)
        ax2.bar(i + w / 2, sc['classify']['seconds'], w, color='#dd8452', label='classify protocol' if i == 0 else None)
    for ax, title in ((ax1, 'simulate'), (ax2, 'embed + cluster vs classify')):
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels(['%d subtomograms' % n for n in sizes])
        ax.set_ylabel('wall time (s)')
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, 'bench_scipion_chain.png'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[10000, 50000])
    p.add_argument('--parts', nargs='+', default=['cli', 'scipion'], choices=['cli', 'scipion'])
    p.add_argument('--box', type=int, default=32)
    p.add_argument('--work', default=os.path.join('/tmp', 'bench_scipion_chain'))
    a = p.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    for n in a.sizes:
        for part in a.parts:
            t0 = time.time()
            res = bench_cli(n, a.work, a.box) if part == 'cli' else bench_scipion(n, a.work, a.box)
            print('[bench_scipion_chain] %d %s: %s (%.0f s)' % (n, part, json.dumps(res), time.time() - t0),
                  flush=True)
            data = merge(n, part, res, a.box)
            if 'ratios' in data[str(n)]:
                print('[bench_scipion_chain] %d ratios: %s' % (n, data[str(n)]['ratios']), flush=True)


if __name__ == '__main__':
    main()
