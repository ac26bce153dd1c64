"""``python -m deepcluster <command>`` / console script ``deepcluster``.

One module per command in this package, each a thin parser over the library in
``deepcluster.core``: it exposes ``add_parser(subparsers)``, which registers the
command and sets ``func(args)``.
User errors (DeepClusterError) are printed as one line, exit status 2.
"""
import argparse
import importlib
import logging
import sys

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
    try:
        args.func(args)
    except DeepClusterError as e:
        print('error: %s' % e, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    return 0
