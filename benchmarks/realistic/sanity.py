"""Quick sanity check of the simulator (~1 min): one small tomogram.

    python -m benchmarks.realistic.sanity

Checks: membrane-bound ribosomes have their tunnel exit 3-5 nm from a membrane
surface and point into it; protein is dark in the tomogram (negative median
skewness, what `embed --contrast auto` looks at); the picks are where they should
be (subtomograms of complexes have more low-frequency structure than negatives).
"""
import sys

import numpy as np
from scipy import ndimage
from scipy.stats import skew

from . import sets, specimen, templates


def main():
    rng = np.random.default_rng(12345)
    failures = []
    # 1. bound geometry
    sp = specimen.Specimen((150, 160, 160), templates.FINE, rng)
    sp.add_vesicle(600.0)
    sp.add_sheet()
    t = sets.template('4v7r_mb')
    for _ in range(6):
        sp.place_bound(t, '4v7r_mb')
    for prt in sp.particles:
        ex = prt['centre'] + prt['R'] @ t.exit_rel
        d = min(abs(sp.sdf(m, ex)[0]) for m in sp.membranes) - specimen.MEMBRANE_SURFACE_A
        ok = 25.0 <= d <= 55.0
        print('bound ribosome: tunnel exit %.0f A from the membrane surface %s' % (d, 'ok' if ok else 'WRONG'))
        if not ok:
            failures.append('exit distance %.0f' % d)
    # 2. contrast and picks in a small tomogram
    labels, out, rec = sets.simulate_tomogram({'4v7r_mb': 6, '4v7r': 6, '4cr2': 6, 'negative': 6}, rng, (13.68,), 40)
    v = np.stack(out[13.68])
    sk = [skew(ndimage.gaussian_filter(x, 1.0)[10:30, 10:30, 10:30].ravel()) for x in v]
    print('median skewness %.2f (negative = dark protein)' % np.median(sk))
    if np.median(sk) >= 0:
        failures.append('protein is not dark')
    lab = np.array(labels)
    lowpass = np.array([ndimage.gaussian_filter(x, 2.0)[12:28, 12:28, 12:28].std() / x.std() for x in v])
    print('low-frequency structure: complexes %.3f, negatives %.3f' % (lowpass[lab != 'negative'].mean(),
                                                                     lowpass[lab == 'negative'].mean()))
    print('timing', rec['seconds'], 'volume fraction', rec['volume_fraction'])
    if failures:
        sys.exit('sanity: FAILED: ' + '; '.join(failures))
    print('sanity: ok')


if __name__ == '__main__':
    main()
