"""The end-to-end demo as a real headless Scipion project.

simulate (procedural structures, or $DEEPCLUSTER_STRUCTURES) -> embed (shipped
model) -> cluster -> numeric classes extractor, then a report folder with the
figures, metrics and a short summary. ``make demo`` / ``python -m deepcluster demo``.
pyworkflow is imported only inside ``run_demo`` (after the headless setup), so
importing this module is cheap and Scipion-free.
"""
import json
import logging
import os
import shutil
import sys
import time

from deepcluster import headless
from deepcluster.core import DeepClusterError

PROJECT = 'deepcluster_demo'


def use_tomography_view(project):
    """Open the project on the Tomography protocol tree, where the deepcluster
    protocols are (pwem's default is the SPA view): the project settings keep
    the chosen view."""
    project.getSettings().setProtocolView('Tomography')
    project.saveSettings()


def gui_command(project_name):
    """The shell command that opens the project in the Scipion GUI, as it must be
    typed: this environment's variables and the ``scipion`` launcher beside the
    running Python (pip installs it as ``scipion``, not ``scipion3``)."""
    import shlex
    python = os.path.abspath(sys.executable)
    launcher = os.path.join(os.path.dirname(python), 'scipion')
    env = {k: os.environ[k] for k in ('SCIPION_HOME', 'SCIPION_USER_DATA') if os.environ.get(k)}
    env['SCIPION_PYTHON'] = python    # the launcher re-runs itself with it (default: python3 on PATH)
    hosts = os.environ.get('SCIPION_HOSTS')
    if hosts and hosts != os.path.join(env.get('SCIPION_HOME', ''), 'config', 'hosts.conf'):
        env['SCIPION_HOSTS'] = hosts
    return '%s %s project %s' % (' '.join('%s=%s' % (k, shlex.quote(v)) for k, v in env.items()),
                                 shlex.quote(launcher), shlex.quote(project_name))


def _launch(project, prot, title):
    t0 = time.time()
    print('[demo] %-28s ...' % title, flush=True)
    project.launchProtocol(prot, wait=True)
    prot = project.getProtocol(prot.getObjId())
    if prot.isFailed():
        raise DeepClusterError('demo: %s failed: %s' % (title, _failure_cause(prot)))
    print('[demo] %-28s done in %.1f s' % (title, time.time() - t0), flush=True)
    return prot


def _failure_cause(prot):
    """The line that says why a protocol failed: the CLI's 'error: ...' line in
    run.stderr (or run.stdout), else the last line of a traceback, else the
    protocol's message; with the log's path, so nothing hides in run.stderr."""
    logs = [p for p in prot.getLogPaths()[:2] if p and os.path.isfile(p)]
    for log in reversed(logs):                   # stderr first
        with open(log, errors='replace') as f:
            lines = [ln.strip() for ln in f.read()[-20000:].splitlines() if ln.strip()]
        hits = [ln for ln in lines if ln.startswith('error:')] or \
            [ln for ln in lines if 'Error' in ln.split(':')[0]]
        if hits:
            return '%s (log: %s)' % (hits[-1], log)
    return '%s (logs: %s)' % (prot.getErrorMessage(), ', '.join(logs) or 'none')


def _is_demo_project(path):
    """A project of an older demo (before they were stamped): only the demo's runs."""
    try:
        runs = os.listdir(os.path.join(path, 'Runs'))
    except OSError:
        return False
    return all(r.split('_', 1)[-1] in ('ProtDeepClusterSimulate', 'ProtDeepClusterEmbed',
                                       'ProtDeepClusterCluster', 'ProtClassesSelector') for r in runs)


def is_demo_report(path):
    """A report folder of a demo from before reports were stamped."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return {'summary.txt', 'metrics.json'} <= names


def run_demo(args):
    from deepcluster.core.outputs import check_out_path, claim_output
    check_out_path(args.out)
    claim_output(args.out, 'demo', ours=is_demo_report, folder=True)   # before minutes of work
    headless.configure()
    from pyworkflow.project import Manager
    logging.getLogger().setLevel(logging.WARNING)   # pyworkflow's per-run chatter; runs keep their logs
    t0 = time.time()
    report = os.path.abspath(args.out)
    structures = os.path.abspath(args.structures) if args.structures else None
    from deepcluster.core.outputs import mark_folder, read_stamp
    manager = Manager()
    if manager.hasProject(args.project):
        path = manager.getProjectPath(args.project)
        if read_stamp(path) != 'demo' and args.project != PROJECT and not _is_demo_project(path):
            raise DeepClusterError('--project %s: a Scipion project that the demo did not create; give '
                                   'another name' % args.project)
        manager.deleteProject(args.project)
    project = manager.createProject(args.project)
    mark_folder(project.path, 'demo')               # ours: the next demo may replace it
    use_tomography_view(project)
    cwd = os.getcwd()
    os.chdir(project.path)          # pyworkflow resolves run paths from the project folder
    try:
        _run_chain(args, project, report, structures, t0)
    finally:
        os.chdir(cwd)


def _run_chain(args, project, report, structures, t0):
    from pwem.protocols import ProtClassesSelector

    from deepcluster.protocols import (ProtDeepClusterCluster, ProtDeepClusterEmbed,
                                       ProtDeepClusterSimulate)
    from deepcluster.protocols.protocol_cluster import K_FIXED

    sim = project.newProtocol(ProtDeepClusterSimulate, nPerClass=args.n_per_class,
                              seed=args.seed, negative=True)
    if structures:
        sim.structuresPath.set(structures)
    else:
        sim.procedural.set(args.procedural)
    sim = _launch(project, sim, 'simulate')
    subtomos = sim.subtomograms
    n_classes = len({st._dcLabel.get() for st in subtomos})

    emb = project.newProtocol(ProtDeepClusterEmbed)
    emb.inputSubtomograms.set(sim)
    emb.inputSubtomograms.setExtended('subtomograms')
    emb = _launch(project, emb, 'embed (shipped model)')

    clu = project.newProtocol(ProtDeepClusterCluster, kMode=K_FIXED, numberOfClasses=n_classes)
    clu.inputSubtomograms.set(emb)
    clu.inputSubtomograms.setExtended('subtomograms')
    clu = _launch(project, clu, 'cluster (k-means, k=%d)' % n_classes)

    sel = project.newProtocol(ProtClassesSelector, firstNElements=2)
    sel.inputClasses.set(clu)
    sel.inputClasses.setExtended('classes')
    sel = _launch(project, sel, 'select the 2 biggest classes')
    halves = _averaging_ready(project, sel)

    from deepcluster.core.outputs import claim_output, output_folder
    claim_output(report, 'demo', ours=is_demo_report, folder=True)
    with output_folder(report, 'demo') as tmp:      # built whole, renamed as a unit
        _write_report(tmp, args, project, sim, emb, clu, sel, subtomos, n_classes, structures, t0, halves)
    print('\nReport (figures, metrics.json, summary.txt): %s' % report)
    print('Scipion project: %s\n  open it in the GUI with:\n    %s'
          % (project.getPath(), gui_command(args.project)))


def _averaging_ready(project, sel):
    """The selected set, split into even/odd halves (tomo), as gold-standard averaging
    takes it; checks that it is what averaging protocols need."""
    from tomo.protocols import ProtSplitEvenOddTomoSet
    out = sel.output
    first = out.getFirstItem()
    if not (out.hasCoordinates3D() and out.hasAlignment3D() and first.hasCoordinate3D()):
        raise DeepClusterError('demo: the selected subtomograms lack coordinates or alignment')
    split = project.newProtocol(ProtSplitEvenOddTomoSet)
    split.inputSet.set(sel)
    split.inputSet.setExtended('output')
    split = _launch(project, split, 'split even/odd for averaging')
    return [o for _, o in split.iterOutputAttributes()]


def _write_report(tmp, args, project, sim, emb, clu, sel, subtomos, n_classes, structures, t0, halves=()):
    shutil.copytree(clu._getExtraPath('plots'), tmp, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns('.*'))      # not the plots' own stamp
    for fn in ('simulated/montage.png',):
        src = sim._getExtraPath(fn)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(tmp, 'simulated_montage.png'))
    info = clu._report() or {}
    with open(os.path.join(tmp, 'metrics.json'), 'w') as f:
        json.dump(info, f, indent=2)
    summary = ['deepcluster demo: %d subtomograms, %d true classes (%s)'
               % (subtomos.getSize(), n_classes,
                  'structures from %s' % structures if structures
                  else '%d procedural pseudo-molecules + negative' % args.procedural)]
    summary += clu._summary() + ['', 'Methods: ' + ' '.join(emb._methods() + clu._methods()),
                                 '', 'Selected for averaging: %d subtomograms of the 2 biggest classes'
                                 % sel.output.getSize()]
    summary += _averaging_lines(tmp, sim, clu, sel, halves)
    summary += ['Total time: %.0f s' % (time.time() - t0)]
    with open(os.path.join(tmp, 'summary.txt'), 'w') as f:
        f.write('\n'.join(summary) + '\n')
    print('\n'.join(summary))


def _averaging_lines(tmp, sim, clu, sel, halves):
    """Copy the class averages (and half maps) into the report; say what the selected
    set carries for the averaging protocols."""
    out = sel.output
    tomos = {st.getCoordinate3D().getTomoId() for st in out.iterSubtomos()}
    lines = ['Averaging-ready: each carries its 3D coordinate in one of %d synthetic tomograms '
             '(%.1f A/px), its pose (transform), tilt range %g..%g deg; even/odd halves of %s '
             'subtomograms (tomo split) for gold-standard averaging.'
             % (len(tomos), sim.tomograms.getSamplingRate(), out.getAcquisition().getAngleMin(),
                out.getAcquisition().getAngleMax(), ' + '.join(str(h.getSize()) for h in halves))]
    avgs = getattr(clu, 'averages', None)
    if avgs is not None:
        folder = os.path.join(tmp, 'averages')
        os.makedirs(folder, exist_ok=True)
        for avg in avgs:
            for fn in [avg.getFileName()] + avg.getHalfMaps().split(','):
                shutil.copy(fn, folder)
        lines.append('Class averages (missing-wedge weighted, aligned members; half maps): %d in '
                     'averages/, shown in gallery.png; registered as the cluster run\'s "averages".'
                     % avgs.getSize())
    return lines


if __name__ == '__main__':
    from deepcluster.cli import main
    main(['demo'] + sys.argv[1:])
