"""``python -m deepcluster <command>`` / console script ``deepcluster``.

One module per command in this package, each a thin parser over the library in
``deepcluster.core``: it exposes ``add_parser(subparsers)``, which registers the
command and sets ``func(args)``.
User errors (DeepClusterError; OSError as a last resort) are printed as one line,
exit status 2; SIGTERM unwinds like an error, so the run's temporaries go.
"""
import argparse
import importlib
import logging
import signal
import sys
import threading

from deepcluster.core import DeepClusterError

# command modules, in the order --help lists them
COMMAND_MODULES = ['deepcluster.cli.simulate', 'deepcluster.cli.train', 'deepcluster.cli.embed',
                   'deepcluster.cli.cluster', 'deepcluster.cli.select', 'deepcluster.cli.demo']


def build_parser():
    from deepcluster import __version__
    parser = argparse.ArgumentParser(
        prog='deepcluster',
        description='Classify cryo-ET subtomograms by 3D shape without alignment: '
                    'simulate labelled data, train an encoder, embed, cluster.')
    parser.add_argument('--version', action='version', version='%(prog)s ' + __version__)
    parser.add_argument('-q', '--quiet', action='store_true', help='only print warnings and errors')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='%(asctime)s %(message)s', datefmt='%H:%M:%S', stream=sys.stdout)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 0
    for stream in (sys.stdout, sys.stderr):     # odd bytes in a path never kill the log
        if hasattr(stream, 'reconfigure'):
            stream.reconfigure(errors='backslashreplace')
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)   # unwind: temporaries are removed
        sys.unraisablehook = _unraisable
    try:
        args.func(args)
        if _exit_code:
            sys.exit(_exit_code)
    except DeepClusterError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        _fail('out of memory; try a smaller --batch-size (or fewer/smaller inputs)')
    except OSError as e:         # last resort: the specific checks name the flag first
        from deepcluster.core.outputs import user_error
        _fail(str(user_error(e)))
    return 0


def _fail(msg):
    """One line, exit status 2: an error the user can fix."""
    print('error: %s' % ' '.join(str(msg).split()), file=sys.stderr)
    sys.exit(2)


def _terminated(signum, frame):
    """SIGTERM: unwind (temporaries are removed), after any commit under way."""
    from deepcluster.core.outputs import request_exit
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    request_exit(143)


def _unraisable(hook_args):
    """A SystemExit raised by SIGTERM where Python cannot propagate it (a destructor,
    a callback) is not a traceback for the user; the run still ends with 143."""
    if issubclass(hook_args.exc_type, SystemExit):
        global _exit_code
        _exit_code = 143
        return
    sys.__unraisablehook__(hook_args)


_exit_code = 0
