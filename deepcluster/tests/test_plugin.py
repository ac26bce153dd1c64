"""The plugin as Scipion sees it: discovered, every protocol listed, citations."""
import inspect

import pytest


def test_every_protocol_is_registered():
    import pwem
    import deepcluster.protocols as prots
    ours = {name for name, obj in inspect.getmembers(prots, inspect.isclass)
            if name.startswith('ProtDeepCluster') and obj._label}
    assert ours >= {'ProtDeepClusterSimulate', 'ProtDeepClusterTrain', 'ProtDeepClusterEmbed',
                    'ProtDeepClusterCluster', 'ProtDeepClusterClassify'}
    registered = set(pwem.Domain.getProtocols())
    missing = ours - registered
    assert not missing, 'protocols hidden from Scipion (import error?): %s' % missing


def test_plugin_face():
    import pwem
    import deepcluster
    from deepcluster import bibtex
    plugin = pwem.Domain.getPlugin('deepcluster')
    assert plugin is deepcluster
    assert isinstance(deepcluster.Plugin(), pwem.Plugin)
    assert set(deepcluster._references) <= set(pwem.Domain.getPlugin('deepcluster')._references)
    for key in deepcluster._references:
        assert key in bibtex.__doc__


def test_model_object_is_mapped():
    import pwem
    assert 'DeepClusterModel' in pwem.Domain.getObjects()


def test_protocols_conf_lists_every_protocol():
    import os
    import deepcluster
    conf = open(os.path.join(os.path.dirname(deepcluster.__file__), 'protocols.conf')).read()
    for name in ('ProtDeepClusterSimulate', 'ProtDeepClusterTrain', 'ProtDeepClusterEmbed',
                 'ProtDeepClusterCluster', 'ProtDeepClusterClassify'):
        assert name in conf


def test_core_is_a_library_that_never_imports_scipion_or_argparse():
    import ast
    import os
    import deepcluster.core
    core = os.path.dirname(deepcluster.core.__file__)
    files = [os.path.join(d, f) for d, _, fs in os.walk(core) for f in fs if f.endswith('.py')]
    assert len(files) > 15
    for fn in files:
        tree = ast.parse(open(fn).read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split('.')[0] not in ('pyworkflow', 'pwem', 'tomo', 'argparse'), (fn, n)


@pytest.mark.parametrize('args', [['--help'], ['--version']])
def test_cli_help(args, capsys):
    from deepcluster.cli import main
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0


def test_console_script_and_module_entry_points():
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(sys.executable), 'deepcluster')
    assert os.path.exists(script), 'console script not installed (pip install -e .)'
    for cmd in ([script, '--help'], [sys.executable, '-m', 'deepcluster', 'embed', '--help']):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert 'usage: deepcluster' in out.stdout
    out = subprocess.run([script, '--help'], capture_output=True, text=True, timeout=120)
    for command in ('simulate', 'train', 'embed', 'cluster', 'demo'):
        assert command in out.stdout
