"""Templates for the data model: density maps from .mrc maps, PDB/mmCIF models,
in-memory arrays, or procedural pseudo-molecules.

Every template comes out the same way, whatever its source:

- cubic float32, zyx order, at the requested voxel size;
- protein POSITIVE, background 0 (the border level is subtracted, negatives clipped);
- centred on its centre of mass (sub-voxel exact), so a particle picked at its
  centre sits at the box centre, and cropped to a cube of side ``2R+1`` that holds
  every voxel above ``threshold * max`` within radius ``R - margin`` of the centre
  (rotation inside that sphere is lossless, and small boxes rotate cheaply);
- scaled so its MAXIMUM is 1. At the ~2-3 voxel resolution of these maps the
  interior of any protein saturates at about the same level, so "max = 1" makes
  one voxel of protein worth ~1 whatever the source's units (EMAN maps peak at
  ~230 or ~20, gemmi maps in electrons/Å^3, ...), and the integrated density of a
  template is then proportional to its mass. This is what makes maps from
  different sources comparable.

``Template.membrane`` tells the simulator about a template's membrane context:
'none' (soluble), 'embedded' (membrane protein; the bilayer passes through the
centre, normal to the map's z axis) or 'attached' (sits on a membrane, which
touches the particle on its -z side).
"""
import dataclasses
import logging
import os

import numpy as np
from scipy import ndimage

from deepcluster.core import DeepClusterError
from deepcluster.core.inference.volumes import (MRC_SUFFIXES, VOXEL_RANGE, border_mean, pad_to_cube, read_volume,
                                               resample)

MAX_TEMPLATE = 320     # voxels: a structure larger than this at the simulated voxel size is refused

log = logging.getLogger(__name__)

MODEL_SUFFIXES = ('.pdb', '.ent', '.cif', '.mmcif', '.pdb.gz', '.ent.gz', '.cif.gz', '.mmcif.gz')
MEMBRANE_KINDS = ('none', 'embedded', 'attached')


@dataclasses.dataclass
class Template:
    """One particle species: a centred, cropped, max-normalised density map."""
    name: str
    density: np.ndarray          # (n, n, n) float32, n odd, centre voxel = centre of mass
    voxel_size: float            # Å
    membrane: str = 'none'       # 'none' | 'embedded' | 'attached'
    source: str = ''

    def __post_init__(self):
        if self.membrane not in MEMBRANE_KINDS:
            raise DeepClusterError('%s: membrane must be one of %s, not %r'
                                   % (self.name, '/'.join(MEMBRANE_KINDS), self.membrane))

    @property
    def radius(self):
        """Half the side of the cube (voxels): all density lies within it."""
        return (self.density.shape[0] - 1) // 2

    @property
    def effective_volume(self):
        """Participation ratio (sum d)^2 / sum d^2, in voxels: the number of voxels
        a uniform object with the same density would fill (scale free)."""
        d = self.density.astype(np.float64)
        return float(d.sum() ** 2 / max((d * d).sum(), 1e-30))


# ----------------------------------------------------------------- finishing
def finish_template(name, density, voxel_size, membrane='none', source='',
                    threshold=0.03, margin=2):
    """Background to 0, centre on the centre of mass, crop, scale max to 1."""
    vol = np.asarray(density, dtype=np.float64)
    if vol.ndim != 3 or min(vol.shape) < 4:
        raise DeepClusterError('%s: expected a 3D map, got shape %s' % (source or name, vol.shape))
    if not np.isfinite(vol).all():
        raise DeepClusterError('%s: contains NaN or infinite voxels' % (source or name))
    vol = vol - border_mean(vol.astype(np.float32))
    vmax, vmin = vol.max(), vol.min()
    if not vmax > 0 or vmax < 0.5 * -vmin:
        raise DeepClusterError('%s: no positive density above the background (is the protein '
                               'negative, i.e. contrast inverted? protein must be positive)' % (source or name))
    vol = np.clip(vol, 0, None)
    vol /= vmax
    idx = np.indices(vol.shape, dtype=np.float64)
    mass = vol.sum()
    com = np.array([(idx[a] * vol).sum() / mass for a in range(3)])
    support = np.argwhere(vol > threshold)
    rmax = np.sqrt(((support - com) ** 2).sum(axis=1)).max() if len(support) else 1.0
    r = int(np.ceil(rmax)) + margin
    side = 2 * r + 1
    # integer part: cut (with zero padding) a cube 2 voxels larger than needed
    c = np.round(com).astype(int)
    big = side + 4
    lo = c - big // 2
    pad = [(max(0, -lo[a]), max(0, lo[a] + big - vol.shape[a])) for a in range(3)]
    padded = np.pad(vol, pad)
    lo = lo + np.array([p[0] for p in pad])
    sub = padded[lo[0]:lo[0] + big, lo[1]:lo[1] + big, lo[2]:lo[2] + big]
    # fractional part: cubic spline shift so the centre of mass is the centre voxel
    sub = ndimage.shift(sub, c - com, order=3, mode='constant', cval=0.0)
    out = np.clip(sub[2:-2, 2:-2, 2:-2], 0, None)
    out /= out.max()
    return Template(name=name, density=np.ascontiguousarray(out, dtype=np.float32),
                    voxel_size=float(voxel_size), membrane=membrane, source=source)


def template_from_array(name, density, voxel_size, target_voxel_size=None,
                        membrane='none', source='array', threshold=0.03):
    """A template from an in-memory map (any shape, any voxel size)."""
    vol = np.asarray(density, dtype=np.float32)
    label = source if source != 'array' else 'map %r' % name
    if vol.ndim != 3 or min(vol.shape) < 4:
        raise DeepClusterError('%s: expected a 3D map, got shape %s' % (label, vol.shape))
    if max(vol.shape) > 8 * min(vol.shape):
        raise DeepClusterError('%s: map of shape %s is too far from cubic to pad to a cube'
                               % (label, vol.shape))
    if not voxel_size or voxel_size <= 0:
        raise DeepClusterError('%s: no voxel size (header says none); give it explicitly' % label)
    if not np.isfinite(vol).all():
        raise DeepClusterError('%s: contains NaN or infinite voxels' % label)
    if not VOXEL_RANGE[0] <= voxel_size <= VOXEL_RANGE[1]:
        raise DeepClusterError('%s: voxel size %g A is not plausible; fix its header' % (label, voxel_size))
    target = float(target_voxel_size or voxel_size)
    m = int(round(max(vol.shape) * voxel_size / target))
    if m > MAX_TEMPLATE:            # e.g. a 1000 A/voxel header: 100x larger at 10 A, terabytes
        raise DeepClusterError('%s: %d voxels of %g A are %d voxels at %g A, more than %d; give a map '
                               'of one particle (or fix its voxel size)'
                               % (label, max(vol.shape), voxel_size, m, target, MAX_TEMPLATE))
    vol = vol - border_mean(vol)
    vol = pad_to_cube(vol, fill=0.0)
    if abs(voxel_size - target) > 1e-3 * target:
        vol, _ = resample(vol, voxel_size, target)
    return finish_template(name, vol, target, membrane, source, threshold=threshold)


# ---------------------------------------------------------------- atomic models
def template_from_model(path, voxel_size, name=None, membrane='none', assembly=True, blur=None):
    """Density of an atomic model (PDB/mmCIF) with gemmi's electron-scattering
    calculator. d_min = 2 voxels; the default blur B = 20 * voxel^2 Å^2 (2000 at
    10 Å) band-limits the map so nothing aliases (README: correlates 0.99 with
    EMAN ``e2pdb2mrc --res 30`` maps). With ``assembly`` the first biological
    assembly (PDB BIOMT / mmCIF pdbx_struct_assembly) is built when present.
    """
    import gemmi
    name = name or _stem(path)
    try:
        st = gemmi.read_structure(str(path))
    except Exception as e:
        raise DeepClusterError('%s: not a readable atomic model (%s)' % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if len(st) == 0:
        raise DeepClusterError('%s: atomic model holds no atoms' % path)
    st.remove_waters()
    model = st[0]
    if assembly and len(st.assemblies):
        try:
            model = gemmi.make_assembly(st.assemblies[0], model, gemmi.HowToNameCopiedChain.AddNumber)
        except Exception as e:  # a broken assembly record: fall back to the deposited model
            log.warning('%s: could not build the biological assembly (%s); using the deposited '
                        'coordinates', path, e)
    xyz = np.array([a.pos.tolist() for ch in model for res in ch for a in res], dtype=np.float64)
    if len(xyz) == 0:
        raise DeepClusterError('%s: atomic model holds no atoms' % path)
    com = xyz.mean(axis=0)
    rmax = np.sqrt(((xyz - com) ** 2).sum(axis=1)).max()
    blur = 20.0 * voxel_size ** 2 if blur is None else float(blur)
    pad = 4.0 * np.sqrt(blur / (8 * np.pi ** 2)) + 4 * voxel_size    # blur sigma margin
    n = int(np.ceil(2 * (rmax + pad) / voxel_size)) + 1
    n += n % 2                                                        # even: FFT friendly
    if n > MAX_TEMPLATE:
        raise DeepClusterError('%s: the atoms span %.0f A, %d voxels at %g A (more than %d); give one '
                               'particle' % (path, 2 * rmax, n, voxel_size, MAX_TEMPLATE))
    side = n * voxel_size
    shift = np.full(3, side / 2.0) - com
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2.0 * voxel_size
    dc.blur = blur
    dc.grid.set_unit_cell(gemmi.UnitCell(side, side, side, 90, 90, 90))
    dc.grid.spacegroup = gemmi.find_spacegroup_by_name('P1')
    dc.grid.set_size(n, n, n)
    dc.add_model_density_to_grid(model)
    dens = np.array(dc.grid, copy=True).transpose(2, 1, 0)     # gemmi xyz -> zyx
    return finish_template(name, dens, voxel_size, membrane, source=str(path))


# ----------------------------------------------------------------- the loader
def _stem(path):
    base = os.path.basename(str(path))
    for suf in sorted(MODEL_SUFFIXES + MRC_SUFFIXES, key=len, reverse=True):
        if base.lower().endswith(suf):
            return base[:-len(suf)]
    return os.path.splitext(base)[0]


def _is_structure_file(f):
    return f.lower().endswith(MRC_SUFFIXES + MODEL_SUFFIXES)


def _membrane_of(name, membrane):
    kind = membrane.get(name, 'none') if isinstance(membrane, dict) else (membrane or 'none')
    if kind not in MEMBRANE_KINDS:
        raise DeepClusterError('membrane kind for %s must be one of %s, not %r'
                               % (name, '/'.join(MEMBRANE_KINDS), kind))
    return kind


def load_structures(paths, voxel_size, membrane='none', assembly=True, map_voxel_size=None,
                    threshold=0.03):
    """Templates (one per class, class name = file stem) at ``voxel_size`` Å.

    ``paths``: files or folders of .mrc/.map maps and .pdb/.ent/.cif models, and/or
    in-memory maps given as ``(name, array, voxel_size)`` tuples or ``Template``s.
    Maps are resampled (Fourier) to ``voxel_size`` and padded to a cube; a map
    without a voxel size in its header needs ``map_voxel_size``. ``membrane``: one
    kind for all, or a {name: kind} dict (kinds: none/embedded/attached).
    ``assembly``: build the biological assembly of atomic models (e.g. 1bxn's L8S8).
    Raises a one-line DeepClusterError naming the culprit on any bad input.
    """
    if isinstance(paths, (str, os.PathLike, tuple, Template)):
        paths = [paths]
    if isinstance(membrane, dict):
        for k in membrane.values():
            _membrane_of('?', k)
    items = []                      # (name, loader, where) in input order
    for p in paths:
        if isinstance(p, Template):
            items.append((p.name, lambda p=p: _retarget(p, voxel_size, membrane, threshold), 'template %r' % p.name))
        elif isinstance(p, tuple):
            if len(p) != 3:
                raise DeepClusterError('in-memory maps are given as (name, array, voxel_size), got %d items' % len(p))
            nm, arr, vx = p
            items.append((str(nm), lambda nm=nm, arr=arr, vx=vx: template_from_array(
                str(nm), arr, vx, voxel_size, _membrane_of(str(nm), membrane), 'map %r' % nm, threshold),
                'map %r' % nm))
        else:
            p = os.fspath(p)
            if os.path.isdir(p):
                found = sorted(f for f in os.listdir(p) if _is_structure_file(f))
                if not found:
                    raise DeepClusterError('%s: folder holds no .mrc/.map maps or .pdb/.cif models' % p)
                items.extend(_file_item(os.path.join(p, f), voxel_size, membrane, assembly,
                                        map_voxel_size, threshold) for f in found)
            elif os.path.isfile(p):
                if not _is_structure_file(p):
                    raise DeepClusterError('%s: unsupported file type (expected .mrc/.map maps or '
                                           '.pdb/.ent/.cif models)' % p)
                items.append(_file_item(p, voxel_size, membrane, assembly, map_voxel_size, threshold))
            else:
                raise DeepClusterError('%s: no such file or folder' % p)
    if not items:
        raise DeepClusterError('no structures given')
    seen = {}
    for name, _, where in items:
        if name in seen:
            raise DeepClusterError('duplicate class name %r: %s and %s (class names are file stems; '
                                   'rename one)' % (name, seen[name], where))
        if name == 'negative' or name.endswith('_mb'):
            raise DeepClusterError("%s: class name %r is reserved (negative / *_mb are made by the "
                                   "simulator); rename it" % (where, name))
        seen[name] = where
    out = []
    for name, loader, where in items:
        t = loader()
        log.info('template %-12s %3d^3 voxels at %.2f A (%s, membrane %s)', t.name,
                 t.density.shape[0], t.voxel_size, where, t.membrane)
        out.append(t)
    return out


def _file_item(path, voxel_size, membrane, assembly, map_voxel_size, threshold):
    name = _stem(path)
    kind = _membrane_of(name, membrane)
    if path.lower().endswith(MRC_SUFFIXES):
        def load():
            vol, vx = read_volume(path)
            vx = map_voxel_size or vx
            if vx is None:
                raise DeepClusterError('%s: no voxel size in the header; give the map voxel size' % path)
            return template_from_array(name, vol, vx, voxel_size, kind, path, threshold)
    else:
        def load():
            return template_from_model(path, voxel_size, name, kind, assembly)
    return name, load, path


def _retarget(t, voxel_size, membrane, threshold):
    kind = t.membrane if not isinstance(membrane, dict) or t.name not in membrane else membrane[t.name]
    return template_from_array(t.name, t.density, t.voxel_size, voxel_size, kind,
                               t.source or 'template %r' % t.name, threshold)


# ---------------------------------------------------------- procedural shapes
def shape_invariants(t):
    """Rotation-invariant descriptors: effective volume and the sorted eigenvalues of
    the density's second-moment (inertia) tensor, in voxels."""
    d = t.density.astype(np.float64)
    x = np.indices(d.shape).reshape(3, -1) - (d.shape[0] - 1) / 2.0
    w = d.ravel() / d.sum()
    return np.concatenate([[t.effective_volume], np.sort(np.linalg.eigvalsh((x * w) @ x.T))])


PROCEDURAL_KINDS = ('compact', 'elongated', 'ring', 'assembly', 'helix')


def _rotz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])     # rotation about z, zyx order


def _blob_map(centres, sigmas, weights, n):
    """Sum of isotropic Gaussians (voxel units, zyx, relative to the cube centre)."""
    ax = np.arange(n) - (n - 1) / 2.0
    z, y, x = np.meshgrid(ax, ax, ax, indexing='ij')
    vol = np.zeros((n, n, n))
    for (cz, cy, cx), s, w in zip(centres, sigmas, weights):
        vol += w * np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    return vol


def _symmetrise(unit, order, dihedral):
    """Replicate an asymmetric unit (k,3 zyx) by Cn about z, plus the Dn two-fold
    about x ((z, y, x) -> (-z, -y, x))."""
    pts = np.concatenate([unit @ _rotz(2 * np.pi * j / order).T for j in range(order)])
    if dihedral:
        pts = np.concatenate([pts, pts * np.array([-1, -1, 1])])
    return pts


def procedural_templates(n_classes, voxel_size=10.0, seed=0):
    """``n_classes`` seeded pseudo-molecules ``proc00``, ``proc01``, ...

    Diameters are stratified over 5-40 nm (log scale, growing with the index), so
    no two classes share a size stratum; shapes cycle through compact blobs, elongated rods,
    hollow rings/barrels (Cn or Dn, n = 5-8), subunit assemblies (Cn/Dn, n = 2-4)
    and right-handed helices. Where a helix of >= 10 voxels is followed by a free
    slot the next class is its mirror image (a chiral pair: same invariants, opposite hand).
    Gaussian subunits of sigma >= 12 Å keep the maps at ~30 Å resolution, like
    the structures the method is trained on.
    """
    if n_classes < 1:
        raise DeepClusterError('procedural classes: need at least 1, got %d' % n_classes)
    rng = np.random.default_rng(seed)
    edges = np.exp(np.linspace(np.log(5.0), np.log(40.0), n_classes + 1))
    offset = int(rng.integers(len(PROCEDURAL_KINDS)))
    out, seen = [], []
    i = shape = 0
    while i < n_classes:
        kind = PROCEDURAL_KINDS[(shape + offset) % len(PROCEDURAL_KINDS)]
        shape += 1
        k = i            # sizes grow with the index; same-shape classes sit 5 strata apart
        name = 'proc%02d' % i
        for attempt in range(30):   # redraw until no earlier class has the same invariants
            diam_nm = float(np.exp(rng.uniform(np.log(edges[k]), np.log(edges[k + 1]))))
            dens, desc = _pseudo_molecule(kind, diam_nm * 10.0 / voxel_size, voxel_size, rng)
            t = finish_template(name, dens, voxel_size,
                                source='procedural %s %.1f nm (seed %d)' % (desc, diam_nm, seed))
            inv = shape_invariants(t)
            if all((np.abs(inv - o) / np.maximum(np.abs(inv), np.abs(o))).max() > 0.15 for o in seen):
                break
            kind = PROCEDURAL_KINDS[int(rng.integers(len(PROCEDURAL_KINDS)))]
        out.append(t)
        seen.append(inv)
        if kind == 'helix' and i + 1 < n_classes and diam_nm * 10.0 / voxel_size >= 10:
            mirror = out[-1].density[:, :, ::-1].copy()
            out.append(finish_template('proc%02d' % (i + 1), mirror, voxel_size,
                                       source='procedural mirror image of %s (seed %d)' % (name, seed)))
            seen.append(inv)
            i += 1
        i += 1
    return out


def _pseudo_molecule(kind, diam, voxel_size, rng):
    """(density, description) of one pseudo-molecule of diameter ``diam`` voxels."""
    r = diam / 2.0
    smin = max(1.2 * 10.0 / voxel_size, 0.9)          # >= 12 Å blobs
    if kind == 'compact':
        k = int(np.clip(diam * 1.5, 3, 40))
        u = rng.normal(size=(k, 3))
        u *= (rng.uniform(0, 1, size=(k, 1)) ** (1 / 3)) / np.linalg.norm(u, axis=1, keepdims=True)
        pts = u * r * 0.75
        desc = 'compact blob'
    elif kind == 'elongated':
        aspect = rng.uniform(2.0, 3.0)
        k = int(np.clip(diam * 1.5, 3, 40))
        u = rng.normal(size=(k, 3))
        u *= (rng.uniform(0, 1, size=(k, 1)) ** (1 / 3)) / np.linalg.norm(u, axis=1, keepdims=True)
        pts = u * r * 0.8 * np.array([1.0, 1 / aspect, 1 / aspect])   # long along z
        desc = 'rod (aspect %.1f)' % aspect
    elif kind == 'ring':
        order = int(rng.integers(5, 9))
        dihedral = bool(rng.integers(2))
        ku = int(rng.integers(1, 3))
        unit = np.stack([rng.normal(0, r * 0.08, ku), rng.normal(0, r * 0.08, ku),
                         np.full(ku, r * 0.65)], axis=1)              # on the y=0 plane, radius 0.65 r
        unit[:, 0] += r * 0.25 if dihedral else 0.0
        pts = _symmetrise(unit, order, dihedral)
        desc = '%s%d ring' % ('D' if dihedral else 'C', order)
    elif kind == 'assembly':
        order = int(rng.integers(2, 5))
        dihedral = bool(rng.integers(2))
        ku = int(rng.integers(2, 5))
        unit = rng.normal(0, r * 0.18, size=(ku, 3)) + np.array([r * 0.3 if dihedral else 0, 0, r * 0.4])
        pts = _symmetrise(unit, order, dihedral)
        desc = '%s%d assembly' % ('D' if dihedral else 'C', order)
    else:   # right-handed helix: strongly chiral
        turns = rng.uniform(1.0, 1.6)
        k = max(4, int(diam * 0.8))
        t = np.linspace(0, 2 * np.pi * turns, k)
        rad = r * 0.55
        pts = np.stack([np.linspace(-r * 0.7, r * 0.7, k), rad * np.sin(t), rad * np.cos(t)], axis=1)
        desc = 'helix (%.1f turns)' % turns
    sig = np.maximum(smin, rng.uniform(0.12, 0.22, len(pts)) * diam * (0.5 if kind == 'helix' else 1))
    if kind in ('ring', 'assembly'):
        sig = np.full(len(pts), max(smin, float(np.median(sig))))      # equal subunits keep the symmetry
        w = np.ones(len(pts))
    else:
        w = rng.uniform(0.6, 1.0, len(pts))
    ext = np.abs(pts).max() + 4 * sig.max() + 3
    n = int(2 * np.ceil(ext) + 1)
    return _blob_map(pts, sig, w, n), desc


def templates_for(structures, procedural, voxel_size, seed, embedded=()):
    """The classes of a simulate/train command line: structure files (``embedded``
    names are membrane proteins) then ``procedural`` pseudo-molecules (seeded)."""
    templates = []
    if structures:
        templates += load_structures(structures, voxel_size, membrane={nm: 'embedded' for nm in embedded})
    missing = set(embedded or ()) - {t.name for t in templates}
    if missing:                         # checked with or without --structures
        raise DeepClusterError('--embedded %s: no structure of that name' % ', '.join(sorted(missing)))
    if procedural:
        templates += procedural_templates(procedural, voxel_size, seed=seed)
    return templates

