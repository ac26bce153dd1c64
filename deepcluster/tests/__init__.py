"""Tests. ``make test`` runs them all with pytest; ``scipion3 tests
deepcluster.tests`` (unittest) runs the pyworkflow protocol tests found here."""


def load_tests(loader, tests, pattern):
    from . import test_protocols
    tests.addTests(loader.loadTestsFromModule(test_protocols))
    return tests
