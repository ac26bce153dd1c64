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
    launcher = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), 'scipion')
    env = ' '.join('%s=%s' % (k, shlex.quote(os.environ[k]))
                   for k in ('SCIPION_HOME', 'SCIPION_USER_DATA') if os.environ.get(k))
    return '%s %s project %s' % (env, shlex.quote(launcher), shlex.quote(project_name))


def _launch(project, prot, title):
    t0 = time.time()
    print('[demo] %-28s ...' % title, flush=True)
    project.launchProtocol(prot, wait=True)
    prot = project.getProtocol(prot.getObjId())
    if prot.isFailed():
        log = prot.getLogPaths()[0] if prot.getLogPaths() else ''
        tail = open(log).read()[-3000:] if log and os.path.exists(log) else ''
        raise SystemExit('[demo] %s failed: %s\n%s' % (title, prot.getErrorMessage(), tail))
    print('[demo] %-28s done in %.1f s' % (title, time.time() - t0), flush=True)
    return prot


def run_demo(args):
    headless.configure()
    from pyworkflow.project import Manager
    logging.getLogger().setLevel(logging.WARNING)   # pyworkflow's per-run chatter; runs keep their logs
    t0 = time.time()
    report = os.path.abspath(args.out)
    structures = os.path.abspath(args.structures) if args.structures else None
    manager = Manager()
    if manager.hasProject(args.project):
        manager.deleteProject(args.project)
    project = manager.createProject(args.project)
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

    tmp = report + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(clu._getExtraPath('plots'), tmp)
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
                                 % sel.output.getSize(),
                                 'Total time: %.0f s' % (time.time() - t0)]
    with open(os.path.join(tmp, 'summary.txt'), 'w') as f:
        f.write('\n'.join(summary) + '\n')
    shutil.rmtree(report, ignore_errors=True)
    os.replace(tmp, report)
    print('\n'.join(summary))
    print('\nReport (figures, metrics.json, summary.txt): %s' % report)
    print('Scipion project: %s\n  open it in the GUI with:\n    %s'
          % (project.getPath(), gui_command(args.project)))


if __name__ == '__main__':
    from deepcluster.cli import main
    main(['demo'] + sys.argv[1:])
