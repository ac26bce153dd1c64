"""Stand-in for Xmipp's binding module ``xmipp_base`` (built with the Xmipp binaries),
for the downstream tests only (test_downstream.py puts this folder on sys.path of the
test process): ``xmipp3.protocols`` imports these two names from it at import time.
Calling them means an Xmipp binary was needed, which these tests never run."""


class CondaEnvManager:
    @classmethod
    def yieldInstallAllCmds(cls, *args, **kwargs):
        yield ('echo "stand-in xmipp_base: no Xmipp binaries here"', 'void.target')


def createMetaDataFromPattern(*args, **kwargs):
    raise NotImplementedError('stand-in xmipp_base: needs the Xmipp binding')


def isMdEmpty(*args, **kwargs):
    raise NotImplementedError('stand-in xmipp_base: needs the Xmipp binding')
