"""``python -m deepcluster select MAP.csv --polygon ... --out selection.csv``: a
selection on the saved 2-D map (``cluster --plots DIR`` writes DIR/map.csv) as
a labels.csv-like file the "deepcluster - import selection" protocol (or any
script) reads; the numerics are in ``core.analysis.selection``."""
import logging

import numpy as np

from deepcluster.core import DeepClusterError
from deepcluster.core.analysis.embedding_map import read_map_csv
from deepcluster.core.analysis.selection import (MODES, in_box, in_classes, in_polygon,
                                                 new_labels, write_selection_csv)

log = logging.getLogger(__name__)


def _point(s):
    try:
        x, y = s.split(',')
        return float(x), float(y)
    except ValueError:
        raise DeepClusterError('--polygon point %r: write each point as X,Y (e.g. 1.5,-3)' % s)


def run(args):
    from deepcluster.core.checks import check_number
    from deepcluster.core.outputs import check_out_path, refuse_overlap
    refuse_overlap([('--out', check_out_path(args.out))], [('MAP', args.map)])   # core/outputs policy
    for v in args.box or ():
        check_number('--box', v)
    m = read_map_csv(args.map)
    if not (args.polygon or args.box or args.classes):
        raise DeepClusterError('say what to select: --polygon X,Y X,Y X,Y ..., --box X0 Y0 X1 Y1 '
                               'and/or --classes C ...')
    mask = np.zeros(len(m['file']), bool)
    if args.polygon:
        mask |= in_polygon(m['xy'], [_point(p) for arg in args.polygon
                                     for p in arg.replace(';', ' ').split()])
    if args.box:
        mask |= in_box(m['xy'], args.box[:2], args.box[2:])
    if args.classes:
        known = set(m['cluster'])
        unknown = [c for c in args.classes if c not in known]
        if unknown:
            raise DeepClusterError('--classes %s: not in %s (its classes: %s)'
                                   % (' '.join(unknown), args.map, ' '.join(sorted(known, key=_key))))
        mask |= in_classes(m['cluster'], args.classes)
    try:
        clusters = np.array([int(c) for c in m['cluster']], dtype=np.int64)
    except ValueError:
        raise DeepClusterError('%s: cluster ids must be whole numbers' % args.map)
    if not mask.any():
        raise DeepClusterError('the selection is empty: no item of %s lies there (x %.3g..%.3g, '
                               'y %.3g..%.3g)' % (args.map, *np.r_[m['xy'].min(0), m['xy'].max(0)][[0, 2, 1, 3]]))
    labels = new_labels(clusters, mask, args.mode)
    n = write_selection_csv(args.out, m['file'], labels)
    log.info('%d of %d items selected; %s: %d items in %d classes -> %s', int(mask.sum()),
             len(mask), args.mode, n, len(set(labels[labels > 0].tolist())), args.out)
    return labels


def _key(c):
    return (0, int(c), '') if c.lstrip('-').isdigit() else (1, 0, c)


def add_parser(subparsers):
    p = subparsers.add_parser(
        'select', help='turn a polygon, box or classes on the saved 2-D map into a selection file',
        description='Select items on the 2-D map that "cluster --plots DIR" saves as DIR/map.csv '
                    '(columns file,x,y,cluster,...; the coordinates of embedding.png) and write '
                    'selection.csv (file,label; label = class id of the result, 1 = largest). '
                    'Import it in Scipion with "deepcluster - import selection", or use it as a '
                    'labels.csv. Polygon, box and classes add up.')
    p.add_argument('map', help='map.csv written by "cluster --plots DIR"')
    p.add_argument('--polygon', nargs='+', metavar='"X,Y X,Y X,Y"',
                   help='vertices of a polygon on the map (3 or more; closed automatically), '
                        'in quotes when a coordinate is negative: --polygon "-10,-5 20,-5 0,30"')
    p.add_argument('--box', nargs=4, type=float, metavar=('X0', 'Y0', 'X1', 'Y1'),
                   help='two opposite corners of a box on the map')
    p.add_argument('--classes', nargs='+', metavar='C', help='every item of these clusters')
    p.add_argument('--mode', choices=MODES, default='subset',
                   help='subset (default): the selected items, keeping their class; split: all '
                        'items, the selected ones as a new class; merge: all items, the classes '
                        'the selection touches merged into one')
    p.add_argument('--out', required=True, help='output selection.csv')
    p.set_defaults(func=run)
    return p
