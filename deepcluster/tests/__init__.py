"""Tests. ``make test`` runs them all with pytest; ``scipion3 tests
deepcluster.tests`` (unittest) runs the pyworkflow protocol tests found here."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the shared density maps / PDB files (never copied into the repo); tests that need them skip without
STRUCTURES = os.environ.get('DEEPCLUSTER_STRUCTURES') or os.path.join(REPO, '..', 'shared', 'structures')


def link(prot, attr, source, output):
    """Point ``prot.attr`` at ``source``'s output (pointers go in after newProtocol)."""
    pointer = getattr(prot, attr)
    pointer.set(source)
    pointer.setExtended(output)


def load_tests(loader, tests, pattern):
    from . import test_protocols
    tests.addTests(loader.loadTestsFromModule(test_protocols))
    return tests
