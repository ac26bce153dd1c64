"""Environment for running Scipion without a display or an install of its own.

pyworkflow reads its configuration once, at import time, so ``configure`` must
run before anything imports pyworkflow/pwem/tomo (tests' conftest, the demo).
This module must therefore never import them itself.
"""
import hashlib
import os
import sys
import tempfile

HOSTS_CONF = """[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s
NAME = SCIPION_DEMO_HOST
ADDRESS = localhost
EXECUTION_HOSTS = localhost
QUEUE_SYSTEM = {}
"""


def default_home():
    """A per-checkout folder outside the repo, so two clones never collide."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tag = hashlib.sha1(here.encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), 'deepcluster-scipion-%s' % tag)


def configure(home=None, user_data=None):
    """Set the SCIPION_* variables (setdefault: the caller's values win)."""
    if 'pyworkflow' in sys.modules:
        if os.environ.get('SCIPION_DOMAIN') and os.environ.get('SCIPION_HOME'):
            return os.environ['SCIPION_HOME']      # configured before the import: nothing to do
        raise RuntimeError('deepcluster.headless.configure() must run before pyworkflow '
                           'is imported (its config is read at import time).')
    home = os.environ.get('SCIPION_HOME') or home or default_home()
    os.environ.setdefault('SCIPION_HOME', home)
    os.environ.setdefault('SCIPION_USER_DATA', user_data or os.path.join(home, 'data'))
    hosts = os.path.join(os.environ['SCIPION_HOME'], 'config', 'hosts.conf')
    if not os.environ.get('SCIPION_HOSTS') and not os.path.exists(hosts):
        os.makedirs(os.path.dirname(hosts), exist_ok=True)
        tmp = hosts + '.tmp%d' % os.getpid()
        with open(tmp, 'w') as f:
            f.write(HOSTS_CONF)
        os.replace(tmp, hosts)
    os.environ.setdefault('SCIPION_HOSTS', hosts)
    os.environ.setdefault('SCIPION_DOMAIN', 'pwem')
    os.environ.setdefault('SCIPION_PYTHON', sys.executable)
    os.environ.setdefault('SCIPION_TEST_NOSYNC', '1')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    os.makedirs(os.environ['SCIPION_USER_DATA'], exist_ok=True)
    return os.environ['SCIPION_HOME']
