"""Where a ribosome binds the membrane: the polypeptide exit tunnel of its large
subunit (LSU), as in ER-bound (translocon-bound) ribosomes.

No LSU atomic model is available (../shared/structures/pdb holds only the 30S
atoms of 4v4r; a search of public repositories for a 50S/60S model in PDB/mmCIF
found none small enough to use), so the tunnel cannot be traced through the LSU
rRNA and the tunnel-lining proteins (uL4, uL22, uL23, uL29) as the issue asks.
It is derived from the subunits' geometry instead, and never from an axis of a
map file:
1. the 30S *atoms* (4v4r_30S.pdb) are turned into a 30 A density and located in
   the 70S map (4v4r.mrc) by FFT cross-correlation; the 50S map likewise;
2. the peptidyl-transferase centre sits at the subunit interface and the tunnel
   runs from there through the LSU body to its solvent side: its direction is
   taken as the line from the SSU's centre of mass through the LSU's centre of
   mass, and the exit as the point where that line leaves the LSU density
   (10 % of its maximum). This is the LSU's "back", roughly 30-40 degrees and
   ~3-5 nm from the real exit (which is nearer the LSU's bottom, by uL23/uL29);
3. the 70S map is fitted into the 80S map (4v7r.mrc, whose subunits are not
   separated) by an exhaustive rotational search (12,000 rotations at 20 A, then
   local refinement) with FFT translations; the conserved core carries the exit
   point and direction over.
The result is cached in runs/realistic/ribosome_exit.json.
"""
import os

import mrcfile
import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .templates import CACHE, read_atoms, save_json, splat, structures_root

EXIT_JSON = os.path.join(CACHE, 'ribosome_exit.json')


def _read(name):
    with mrcfile.open(os.path.join(structures_root(), 'maps_10A', name + '.mrc'), permissive=True) as f:
        m = np.asarray(f.data, float)
    border = np.concatenate([m[:2].ravel(), m[-2:].ravel()])
    return np.clip(m - np.median(border), 0, None)


def _pad(a, n):
    out = np.zeros((n, n, n))
    s = [(n - k) // 2 for k in a.shape]
    out[s[0]:s[0] + a.shape[0], s[1]:s[1] + a.shape[1], s[2]:s[2] + a.shape[2]] = a
    return out


def _shift_by_cc(ref, mov):
    """Integer shift t maximising sum ref(x) mov(x - t) (same-size cubes)."""
    cc = np.fft.ifftn(np.fft.fftn(ref) * np.conj(np.fft.fftn(mov))).real
    t = np.array(np.unravel_index(np.argmax(cc), cc.shape))
    n = np.array(cc.shape)
    t = np.where(t > n // 2, t - n, t)
    return t, cc.max() / (np.linalg.norm(ref) * np.linalg.norm(mov))


def _rotate_batch(vol, mats):
    """Rotate a cube (about its centre) by each 3x3 matrix acting on (z, y, x) index vectors."""
    v = torch.from_numpy(vol).float()[None, None]
    n = vol.shape[0]
    lin = torch.linspace(-1, 1, n)
    g = torch.stack(torch.meshgrid(lin, lin, lin, indexing='ij'), -1).reshape(-1, 3)   # (z, y, x)
    out = []
    for m in mats:
        src = g @ torch.from_numpy(np.asarray(m, np.float32))          # R^T applied to output coords
        src = src[:, [2, 1, 0]].reshape(1, n, n, n, 3)                   # grid_sample wants (x, y, z)
        out.append(torch.nn.functional.grid_sample(v, src, align_corners=True)[0, 0])
    return torch.stack(out).numpy()


def _fit_rotation(ref, mov, rotations):
    """Best (score, R, t) of ref ~ rot(mov, R) shifted by t (FFT over shifts)."""
    F = np.conj(np.fft.fftn(ref - ref.mean()))
    best = (-np.inf, None, None)
    for a in range(0, len(rotations), 64):
        mats = rotations[a:a + 64]
        for m, r in zip(mats, _rotate_batch(mov, mats)):
            r = r - r.mean()
            cc = np.fft.ifftn(np.fft.fftn(r) * F).real
            i = np.argmax(cc)
            if cc.flat[i] / np.linalg.norm(r) > best[0]:
                t = np.array(np.unravel_index(i, cc.shape))
                best = (cc.flat[i] / np.linalg.norm(r), m, t)
    n = np.array(ref.shape)
    t = np.where(best[2] > n // 2, best[2] - n, best[2])
    # the correlation was computed as r(x) ref(x + t): r shifted by -t matches ref
    return best[0] / np.linalg.norm(ref - ref.mean()), best[1], -t


def derive_exit():
    """Exit point (A, relative to the 4v7r density's centre of mass, (z, y, x))
    and outward tunnel direction, plus the intermediate numbers."""
    m70, m50 = _read('4v4r'), _read('4v4r_50S')
    xyz, z, _ = read_atoms(os.path.join(structures_root(), 'pdb', '4v4r_30S.pdb'), assembly=False)
    ssu = splat(xyz - xyz.mean(0), z, 10.0, blur_a=30.0)
    n = max(m70.shape[0], m50.shape[0], ssu.shape[0]) + 8
    A, L, S = _pad(m70, n), _pad(m50, n), _pad(ssu, n)
    tS, ccS = _shift_by_cc(A, S)
    tL, ccL = _shift_by_cc(A, L)
    S, L = np.roll(S, tS, (0, 1, 2)), np.roll(L, tL, (0, 1, 2))
    cS, cL = np.array(ndimage.center_of_mass(S)), np.array(ndimage.center_of_mass(L))
    d = (cL - cS) / np.linalg.norm(cL - cS)
    mask = L > 0.1 * L.max()
    s = 0.0
    while True:                      # walk from the LSU centre outwards along d
        p = cL + (s + 1.0) * d
        if not ndimage.map_coordinates(mask.astype(float), p[:, None], order=1)[0] > 0.5:
            if all(not ndimage.map_coordinates(mask.astype(float), (cL + (s + k) * d)[:, None], order=1)[0] > 0.5
                   for k in (1, 2, 3)):
                break
        s += 0.25
    exit70 = cL + s * d
    # fit 70S into 80S at 20 A
    m80 = _read('4v7r')
    N = max(n, m80.shape[0]) + 4
    big70, big80 = _pad(m70, N), _pad(m80, N)
    c70 = np.array(ndimage.center_of_mass(big70))
    big70 = ndimage.shift(big70, (N - 1) / 2.0 - c70, order=1)          # rotate about its COM
    off70 = (N - 1) / 2.0 - c70                                          # map index -> big index
    lo70, lo80 = ndimage.zoom(big70, 0.5, order=1), ndimage.zoom(big80, 0.5, order=1)
    rots = Rotation.random(12000, random_state=0).as_matrix()
    score, R, t = _fit_rotation(lo80, lo70, rots)
    for step in (0.12, 0.05, 0.02):              # local refinement
        local = (Rotation.from_matrix(R) * Rotation.from_rotvec(
            np.random.default_rng(1).normal(0, step, (300, 3)))).as_matrix()
        s2, R2, t2 = _fit_rotation(lo80, lo70, np.concatenate([[R], local]))
        if s2 >= score:
            score, R, t = s2, R2, t2
    # full-sampling translation for the chosen rotation
    rot70 = _rotate_batch(big70, [R])[0]
    t_full, cc_full = _shift_by_cc(big80, rot70)
    ctr = (N - 1) / 2.0
    # a point p (map-70 index) -> big70 index p + off70 (- pad offset) -> rotated about ctr -> + t_full
    pad70 = np.array([(N - k) // 2 for k in m70.shape]) - np.array([(n - k) // 2 for k in m70.shape])
    p_big = exit70 + pad70 + off70
    # _rotate_batch samples out(x) = in(R^T-ish): out coords g, src = g @ R -> src = R^T g, so in->out is g = R src
    q = ctr + R @ (p_big - ctr) + t_full
    d80 = R @ d
    com80 = np.array(ndimage.center_of_mass(big80))
    rel_a = (q - com80) * 10.0
    # how deep inside the 80S density the transferred exit is: walk outwards to its surface
    mask80 = big80 > 0.1 * big80.max()
    s = 0.0
    while s < 40 and ndimage.map_coordinates(mask80.astype(float), (q + (s + 0.5) * d80)[:, None], order=1)[0] > 0.5:
        s += 0.25
    surf_rel_a = (q + s * d80 - com80) * 10.0
    return {'exit_rel_com_A_zyx': surf_rel_a.tolist(), 'direction_zyx': d80.tolist(),
            'exit_70S_rel_A_zyx': rel_a.tolist(),
            'fit': {'ssu_atoms_in_70S_cc': round(float(ccS), 3), 'lsu_map_in_70S_cc': round(float(ccL), 3),
                    '70S_in_80S_cc': round(float(cc_full), 3), 'rotations_searched': 12000 + 900},
            'lsu_depth_along_tunnel_A': round(float(s * 10.0), 1),
            'method': 'geometry: SSU-centroid -> LSU-centroid line, exit where it leaves the LSU density; '
                      '70S fitted into 80S (no LSU atomic model available)'}


def ribosome_exit():
    import json
    if os.path.exists(EXIT_JSON):
        with open(EXIT_JSON) as f:
            return json.load(f)
    res = derive_exit()
    save_json(EXIT_JSON, res)
    return res


if __name__ == '__main__':
    import json
    torch.set_num_threads(2)
    print(json.dumps(derive_exit(), indent=1))
