"""Structures -> densities on the simulation grid (independent of deepcluster.core).

Units: a template is a 3-D array of *protein-equivalent volume fraction* on the
fine simulation grid (``FINE`` A/voxel): 1 = a voxel full of protein (1.35 g/cm^3),
0 = ice. Its integral is the molecular volume, mass x 1.21 A^3/Da, so complexes
scale with their mass, not with how a map file happened to be normalised.

Sources, all read from ``../shared/structures`` (or $DEEPCLUSTER_STRUCTURES) or
from PDB files fetched into runs/realistic/pdb (never copied into the repo):
- atomic models through gemmi (assemblies from BIOMT), splatted with the atom's
  electron count Z and blurred to ~8 A (a map at the fine sampling);
- density maps (maps_10A, made with e2pdb2mrc at 30 A resolution) resampled by
  cubic splines, background removed, scaled to the mass: for the maps on the
  ~230-max scale the integral-to-mass factor is measured on 1bxn (map vs atoms),
  for 4v7r (zero-mean scale) the 80S mass 3.3 MDa is assumed.
"""
import json
import os

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(REPO, 'runs', 'realistic')
FINE = 9.12                    # A/voxel of the simulation grid (13.68 / 1.5)
A3_PER_DA = 1.21               # protein partial specific volume
MAP_UNITS_PER_KDA = 87361.0 / 240.0     # 1bxn.mrc integral / mass of its atoms (no H)
MAP_MASS_KDA = {'4v7r': 3300.0}          # maps on another intensity scale: assumed mass


def structures_root():
    root = os.environ.get('DEEPCLUSTER_STRUCTURES') or os.path.join(REPO, '..', 'shared', 'structures')
    if not os.path.isdir(os.path.join(root, 'maps_10A')):
        raise SystemExit('structures not found at %s: set DEEPCLUSTER_STRUCTURES' % root)
    return root


# ----------------------------------------------------------------- atoms
def read_atoms(path, assembly=True):
    """(xyz (N,3) A, Z (N,), mass Da) of the polymer atoms of a PDB/mmCIF file,
    expanded to its first biological assembly (BIOMT) when there is one."""
    st = gemmi.read_structure(path)
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    model = st[0]
    if assembly and len(st.assemblies):
        model = gemmi.make_assembly(st.assemblies[0], model, gemmi.HowToNameCopiedChain.Short)
    xyz, z, m = [], [], 0.0
    for ch in model:
        for res in ch:
            for a in res:
                xyz.append(a.pos.tolist())
                z.append(a.element.atomic_number)
                m += a.element.weight
    return np.asarray(xyz, float), np.asarray(z, float), m


def ca_atoms(path):
    st = gemmi.read_structure(path)
    st.setup_entities()
    st.remove_ligands_and_waters()
    return np.array([a.pos.tolist() for ch in st[0] for res in ch for a in res if a.name in ('CA', 'P')])


def splat(xyz, weight, voxel, box=None, blur_a=8.0):
    """Atoms (already centred) -> cubic density (trilinear splat + Gaussian blur)."""
    half = np.abs(xyz).max() + 3 * blur_a
    n = box or int(2 * np.ceil(half / voxel) + 2)
    g = xyz / voxel + (n - 1) / 2.0
    i0 = np.floor(g).astype(int)
    f = g - i0
    out = np.zeros(n ** 3)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = weight * np.abs(1 - dx - f[:, 0]) * np.abs(1 - dy - f[:, 1]) * np.abs(1 - dz - f[:, 2])
                ii = i0 + [dx, dy, dz]
                ok = ((ii >= 0) & (ii < n)).all(1)
                # array index order (z, y, x) <- atom (x, y, z)
                flat = (ii[ok, 2] * n + ii[ok, 1]) * n + ii[ok, 0]
                out += np.bincount(flat, w[ok], n ** 3)
    out = out.reshape(n, n, n)
    return ndimage.gaussian_filter(out, blur_a / voxel / 2.0)


def atoms_template(xyz, z, mass, voxel=FINE):
    """Protein-equivalent density of an atomic model, centred on its centre of mass."""
    c = (xyz * z[:, None]).sum(0) / z.sum()
    d = splat(xyz - c, z, voxel)
    return d * (mass * A3_PER_DA / voxel ** 3) / d.sum()


# ----------------------------------------------------------------- maps
def map_template(name, voxel=FINE):
    """A maps_10A map at the fine sampling, background removed, scaled to its mass,
    centred on its centre of mass."""
    path = os.path.join(structures_root(), 'maps_10A', name + '.mrc')
    with mrcfile.open(path, permissive=True) as f:
        m = np.asarray(f.data, float)
        vx = float(f.voxel_size.x) or 10.0
    border = np.concatenate([m[:2].ravel(), m[-2:].ravel(), m[:, :2].ravel(), m[:, -2:].ravel(),
                             m[:, :, :2].ravel(), m[:, :, -2:].ravel()])
    m = np.clip(m - np.median(border), 0, None)
    mass_kda = MAP_MASS_KDA.get(name, m.sum() / MAP_UNITS_PER_KDA)
    d = np.clip(ndimage.zoom(m, vx / voxel, order=3), 0, None)
    com = np.array(ndimage.center_of_mass(d))
    d = ndimage.shift(d, (np.array(d.shape) - 1) / 2.0 - com, order=1)
    return d * (mass_kda * 1e3 * A3_PER_DA / voxel ** 3) / d.sum(), mass_kda


def crop_to_content(d, frac=1e-3, pad=2):
    """Smallest centred cube holding the density in any orientation (its side is
    the diameter of the content's bounding sphere about the cube centre)."""
    n = d.shape[0]
    mask = d > frac * d.max()
    idx = np.argwhere(mask)
    r = int(np.ceil(np.linalg.norm(idx - (n - 1) / 2.0, axis=1).max())) + pad
    c = n // 2
    if r > c:
        d = np.pad(d, r - c)
        c = r
    return d[c - r:c + r, c - r:c + r, c - r:c + r]


# ----------------------------------------------------------------- assemblies
def symmetric_assembly(xyz, z, mass, ca, ops, axis_dir, gap=4.0):
    """Copies g (x - c + d u) for g in ``ops`` with the smallest d at which no two
    copies' CA/P atoms come closer than ``gap`` A (a compact, clash-free assembly of
    an unrelated complex; the interfaces are not real ones)."""
    c = ca.mean(0)
    u = np.asarray(axis_dir, float) / np.linalg.norm(axis_dir)

    def copies(pts, d):
        return [(pts - c + d * u) @ g.T for g in ops]

    lo, hi = 0.0, 2 * np.ptp(ca, 0).max()
    for _ in range(30):
        mid = (lo + hi) / 2
        cs = copies(ca, mid)
        trees = [cKDTree(p) for p in cs]
        clash = any(trees[i].query(cs[j], distance_upper_bound=gap)[0].min() < gap
                    for i in range(len(cs)) for j in range(i + 1, len(cs)))
        lo, hi = (mid, hi) if clash else (lo, mid)
    return np.concatenate(copies(xyz, hi)), np.tile(z, len(ops)), mass * len(ops)


def rot_axis(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def cyclic(n):
    return [rot_axis([0, 0, 1], 2 * np.pi * i / n) for i in range(n)]


def tetrahedral_4():
    """Four copies at the vertices of a tetrahedron (the 2-folds of D2 map the
    vertex (1,1,1) onto the other three): use with axis_dir (1, 1, 1)."""
    return [np.diag(v).astype(float) for v in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])]


def save_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
