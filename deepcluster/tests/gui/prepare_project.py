"""Headless part of ``make test-gui``: the demo project plus the runs whose
viewers the screenshots show (a classify run with automatic k, a short train
run). Usage: python prepare_project.py PROJECT REPORT_DIR"""
import os
import sys

from deepcluster import headless


def main(project_name, report):
    headless.configure()
    from deepcluster.cli import main as cli
    cli(['-q', 'demo', '--out', report, '--procedural', '5', '--n-per-class', '30',
         '--project', project_name])
    from pyworkflow.project import Manager
    from deepcluster.protocols import ProtDeepClusterClassify, ProtDeepClusterTrain
    project = Manager().loadProject(project_name)
    os.chdir(project.getPath())
    sim = [p for p in project.getRuns() if p.getClassName() == 'ProtDeepClusterSimulate'][0]
    train = project.newProtocol(ProtDeepClusterTrain, inputType=0, steps=40, batchSize=8, seed=1,
                                useGpu=False)
    train.setObjLabel('train (40 steps: a test run, near chance)')
    train.inputSubtomograms.set(sim)
    train.inputSubtomograms.setExtended('subtomograms')
    project.launchProtocol(train, wait=True)
    cfy = project.newProtocol(ProtDeepClusterClassify, kMin=2, kMax=10, useGpu=False)
    cfy.setObjLabel('classify (auto k)')
    cfy.inputSubtomograms.set(sim)
    cfy.inputSubtomograms.setExtended('subtomograms')
    project.launchProtocol(cfy, wait=True)
    for prot in (project.getProtocol(train.getObjId()), project.getProtocol(cfy.getObjId())):
        if not prot.isFinished():
            raise SystemExit('%s failed: %s' % (prot.getObjLabel(), prot.getErrorMessage()))
    print('[gui] project %s ready' % project.getPath())


if __name__ == '__main__':
    main(sys.argv[1], os.path.abspath(sys.argv[2]))
