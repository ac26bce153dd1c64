"""A crowded cellular specimen slab (a lamella), in protein-equivalent volume
fraction on the fine grid: complexes of several species at 10-30 % volume
fraction, lipid bilayers (flat-ish sheets and vesicles of 40-150 nm radius),
membrane-bound ribosomes held at their tunnel exit 3-5 nm from the membrane,
and particles of every class (and negatives) near membranes.

Geometry: arrays are (z, y, x); the slab is periodic in y and x (the beam of a
tilted view always crosses a full crowded slab, as in a cell) and cut in z by
the lamella surfaces (complexes sticking out are cut). Rotations act on (z, y, x)
vectors.
"""
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

HEAD_OFFSET_A = 20.0      # head-group layers at +-20 A from the mid-plane (~4 nm apart)
HEAD_SIGMA_A = 5.0
CORE_SIGMA_A = 9.0
CORE_LEVEL = -0.3         # hydrocarbon core slightly below water (0.87 vs 1.0 g/cm^3)
MEMBRANE_SURFACE_A = HEAD_OFFSET_A + 5.0   # outer edge of the head groups
CELL = 1                  # occupancy cell = CELL fine voxels


class Template:
    """A complex's density (protein fraction, cube centred on its centre of mass)."""

    def __init__(self, name, density, mass_kda, voxel, exit_rel=None, exit_dir=None):
        self.name, self.mass_kda, self.voxel = name, float(mass_kda), float(voxel)
        self.density = np.asarray(density, np.float32)
        self.n = self.density.shape[0]
        self.volume_a3 = float(self.density.sum()) * voxel ** 3
        c = (self.n - 1) / 2.0
        idx = np.argwhere(self.density > 0.5 * min(1.0, self.density.max()))      # the core: blurred shells may touch
        pts = idx - c
        # one point per occupancy cell is enough for the packing test
        keep = np.unique(np.floor(pts / CELL).astype(int), axis=0, return_index=True)[1]
        self.points = pts[keep].astype(np.float32)
        self.radius = float(np.linalg.norm(pts, axis=1).max()) if len(pts) else 1.0
        self.exit_rel = None if exit_rel is None else np.asarray(exit_rel, float)   # px, (z, y, x)
        self.exit_dir = None if exit_dir is None else np.asarray(exit_dir, float)


def random_rotation(rng):
    return Rotation.random(random_state=rng.integers(2 ** 31)).as_matrix()


def rotation_to(a, b, spin):
    """A rotation taking unit vector a to unit vector b, after spinning ``spin`` rad about a."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    s = Rotation.from_rotvec(a * spin).as_matrix()
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-8:
        r = np.eye(3) if c > 0 else Rotation.from_rotvec(np.pi * _perp(a)).as_matrix()
    else:
        r = Rotation.from_rotvec(v / np.linalg.norm(v) * np.arctan2(np.linalg.norm(v), c)).as_matrix()
    return r @ s


def _perp(a):
    p = np.cross(a, [1.0, 0, 0])
    if np.linalg.norm(p) < 1e-3:
        p = np.cross(a, [0, 1.0, 0])
    return p / np.linalg.norm(p)


def render(t, R, frac):
    """The template rotated by R (out(g) = in(R^T g)) and shifted by the sub-voxel
    offset ``frac`` (z, y, x), same cube size (trilinear)."""
    c = np.full(3, (t.n - 1) / 2.0)
    M = np.asarray(R).T
    return ndimage.affine_transform(t.density, M, offset=c - M @ (c + np.asarray(frac)), order=1,
                                    mode='constant', cval=0.0, output=np.float32)


class Specimen:
    def __init__(self, shape, voxel, rng):
        self.shape = tuple(int(s) for s in shape)       # (Zs, Y, X)
        self.voxel = float(voxel)
        self.rng = rng
        self.vol = np.zeros(self.shape, np.float32)
        self.occ = np.zeros([(s + CELL - 1) // CELL for s in self.shape], bool)       # particles + membranes
        self.occ_p = np.zeros_like(self.occ)                                         # particles only
        self.membranes = []
        self.particles = []           # dicts: name, centre (z, y, x) px, R, pick label or None
        self.occupied_a3 = 0.0

    # ------------------------------------------------------------ membranes
    def add_vesicle(self, radius_a):
        Zs, Y, X = self.shape
        r = radius_a / self.voxel
        cz = self.rng.uniform(Zs / 2 - 0.6 * r, Zs / 2 + 0.6 * r)
        m = {'type': 'vesicle', 'centre': np.array([cz, self.rng.uniform(0, Y), self.rng.uniform(0, X)]),
             'radius_px': r}
        self._add_membrane(m)

    def add_sheet(self):
        Zs, Y, X = self.shape
        m = {'type': 'sheet', 'z0': self.rng.uniform(0.25 * Zs, 0.75 * Zs),
             'amp': self.rng.uniform(0, 120.0 / self.voxel, 2), 'phase': self.rng.uniform(0, 2 * np.pi, 2)}
        self._add_membrane(m)

    def sdf(self, m, p):
        """Signed distance (A, positive outside/above) and unit normal of points p (..., 3)."""
        Zs, Y, X = self.shape
        p = np.asarray(p, float)
        if m['type'] == 'vesicle':
            v = p - m['centre']
            v[..., 1] -= Y * np.round(v[..., 1] / Y)
            v[..., 2] -= X * np.round(v[..., 2] / X)
            d = np.linalg.norm(v, axis=-1)
            return (d - m['radius_px']) * self.voxel, v / np.maximum(d, 1e-6)[..., None]
        ky, kx = 2 * np.pi / Y, 2 * np.pi / X
        h = m['z0'] + m['amp'][0] * np.sin(kx * p[..., 2] + m['phase'][0]) + m['amp'][1] * np.sin(ky * p[..., 1] + m['phase'][1])
        hx = m['amp'][0] * kx * np.cos(kx * p[..., 2] + m['phase'][0])
        hy = m['amp'][1] * ky * np.cos(ky * p[..., 1] + m['phase'][1])
        norm = np.sqrt(1 + hx ** 2 + hy ** 2)
        nrm = np.stack([np.ones_like(hx), -hy, -hx], -1) / norm[..., None]
        return (p[..., 0] - h) / norm * self.voxel, nrm

    def _grid_sdf(self, m):
        """Signed distance (A) on the whole grid, by broadcasting (z, y, x) axes."""
        Zs, Y, X = self.shape
        z = np.arange(Zs, dtype=np.float32)[:, None, None]
        y = np.arange(Y, dtype=np.float32)[None, :, None]
        x = np.arange(X, dtype=np.float32)[None, None, :]
        if m['type'] == 'vesicle':
            cz, cy, cx = m['centre']
            dy = (y - cy) - Y * np.round((y - cy) / Y)
            dx = (x - cx) - X * np.round((x - cx) / X)
            return (np.sqrt((z - cz) ** 2 + dy ** 2 + dx ** 2) - m['radius_px']) * self.voxel
        ky, kx = 2 * np.pi / Y, 2 * np.pi / X
        h = m['z0'] + m['amp'][0] * np.sin(kx * x + m['phase'][0]) + m['amp'][1] * np.sin(ky * y + m['phase'][1])
        hx = m['amp'][0] * kx * np.cos(kx * x + m['phase'][0])
        hy = m['amp'][1] * ky * np.cos(ky * y + m['phase'][1])
        return (z - h) / np.sqrt(1 + hx ** 2 + hy ** 2) * self.voxel

    def _add_membrane(self, m):
        s = self._grid_sdf(m).astype(np.float32)
        prof = (np.exp(-(s - HEAD_OFFSET_A) ** 2 / (2 * HEAD_SIGMA_A ** 2))
                + np.exp(-(s + HEAD_OFFSET_A) ** 2 / (2 * HEAD_SIGMA_A ** 2))
                + CORE_LEVEL * np.exp(-s ** 2 / (2 * CORE_SIGMA_A ** 2)))
        self.vol += prof.astype(np.float32)
        near = np.abs(s) < MEMBRANE_SURFACE_A + 5.0
        cz, cy, cx = np.nonzero(near)
        self.occ[cz // CELL, cy // CELL, cx // CELL] = True
        self.membranes.append(m)

    def membrane_point(self, m, margin_px):
        """A random point on membrane m inside the slab, its normal (outward/upward)."""
        Zs, Y, X = self.shape
        for _ in range(200):
            if m['type'] == 'vesicle':
                u = self.rng.normal(size=3)
                u /= np.linalg.norm(u)
                p = m['centre'] + u * m['radius_px']
            else:
                p = np.array([0.0, self.rng.uniform(0, Y), self.rng.uniform(0, X)])
                p[0] = m['z0']
                s, _ = self.sdf(m, p)
                p[0] += -s / self.voxel
                for _ in range(3):
                    s, _ = self.sdf(m, p)
                    p[0] -= s / self.voxel
            if margin_px <= p[0] < Zs - margin_px:
                _, n = self.sdf(m, p)
                return p, n
        return None, None

    # ------------------------------------------------------------ particles
    def _cells(self, t, R, centre):
        q = t.points @ np.asarray(R).T + centre
        c = np.floor(q / CELL).astype(int)
        inside = (c[:, 0] >= 0) & (c[:, 0] < self.occ.shape[0])
        c = c[inside]
        c[:, 1] %= self.occ.shape[1]
        c[:, 2] %= self.occ.shape[2]
        return c

    def fits(self, t, R, centre, tolerance=0.02):
        c = self._cells(t, R, centre)
        return len(c) and self.occ[c[:, 0], c[:, 1], c[:, 2]].mean() <= tolerance

    def place(self, t, R, centre, label=None, rendered=None):
        c = self._cells(t, R, centre)
        self.occ[c[:, 0], c[:, 1], c[:, 2]] = True
        self.occ_p[c[:, 0], c[:, 1], c[:, 2]] = True
        base = np.floor(centre).astype(int)
        frac = centre - base
        arr = render(t, R, frac) if rendered is None else rendered
        n = arr.shape[0]
        lo = base - (n - 1) // 2
        Zs, Y, X = self.shape
        zi = np.arange(lo[0], lo[0] + n)
        ok = (zi >= 0) & (zi < Zs)
        yi = np.arange(lo[1], lo[1] + n) % Y
        xi = np.arange(lo[2], lo[2] + n) % X
        self.vol[np.ix_(zi[ok], yi, xi)] += arr[ok]
        self.occupied_a3 += t.volume_a3 * ok.mean()
        self.particles.append({'name': t.name, 'centre': np.asarray(centre, float), 'R': R, 'label': label})

    def support(self, t, R, direction):
        """How far (A) the rotated complex reaches from its centre along ``direction``."""
        return float((t.points @ np.asarray(R).T @ direction).max()) * self.voxel

    def random_centre(self, margin_px=0.0):
        Zs, Y, X = self.shape
        return np.array([self.rng.uniform(margin_px, Zs - margin_px), self.rng.uniform(0, Y), self.rng.uniform(0, X)])

    def place_free(self, t, label, tries=400):
        for _ in range(tries):
            R = random_rotation(self.rng)
            c = self.random_centre(0.3 * t.radius)
            if self.fits(t, R, c):
                self.place(t, R, c, label)
                return True
        return False

    def place_near_membrane(self, t, label, gap_a=(20.0, 200.0), tries=200):
        """Not bound: a random pose with the surface 2-20 nm from a membrane."""
        for _ in range(tries):
            m = self.membranes[self.rng.integers(len(self.membranes))]
            p, n = self.membrane_point(m, 0.3 * t.radius)
            if p is None:
                continue
            n = n * (1 if self.rng.random() < 0.5 or m['type'] == 'vesicle' else -1)
            R = random_rotation(self.rng)
            dist = MEMBRANE_SURFACE_A + self.rng.uniform(*gap_a) + self.support(t, R, -n)
            c = p + n * dist / self.voxel
            if 0 <= c[0] < self.shape[0] and self.fits(t, R, c):
                self.place(t, R, c, label)
                return True
        return False

    def place_bound(self, t, label, gap_a=(30.0, 50.0), tries=300):
        """Membrane-bound at the tunnel exit: the exit 3-5 nm from the membrane surface,
        the tunnel pointing into the membrane, a random spin about the tunnel."""
        for _ in range(tries):
            m = self.membranes[self.rng.integers(len(self.membranes))]
            p, n = self.membrane_point(m, 0.3 * t.radius)
            if p is None:
                continue
            if m['type'] == 'sheet' and self.rng.random() < 0.5:
                n = -n
            R = rotation_to(t.exit_dir, -n, self.rng.uniform(0, 2 * np.pi))
            exit_world = p + n * (MEMBRANE_SURFACE_A + self.rng.uniform(*gap_a)) / self.voxel
            c = exit_world - R @ t.exit_rel
            if not (0 <= c[0] < self.shape[0]):
                continue
            # the complex may not touch the membrane it binds (own cells only, not the membrane)
            cells = self._cells(t, R, c)
            if len(cells) and self._overlap_without_membranes(cells) <= 0.02 and self._membrane_clear(t, R, c):
                self.place(t, R, c, label)
                return True
        return False

    def _overlap_without_membranes(self, cells):
        return self.occ_p[cells[:, 0], cells[:, 1], cells[:, 2]].mean()

    def _membrane_clear(self, t, R, c):
        q = t.points @ np.asarray(R).T + c
        for m in self.membranes:
            s, _ = self.sdf(m, q)
            if (np.abs(s) < HEAD_OFFSET_A).mean() > 0.002:
                return False
        return True

    def fill(self, crowders, fraction, max_tries=60000):
        """Add crowders (pre-rotated banks) until the complexes' volume fraction is
        reached; candidate centres are drawn from the free cells (refreshed now and then)."""
        target = fraction * np.prod(self.shape) * self.voxel ** 3
        tries = 0
        free = None
        while self.occupied_a3 < target and tries < max_tries:
            if tries % 2000 == 0:
                free = np.flatnonzero(~self.occ)
                if not len(free):
                    break
            tries += 1
            t, bank = crowders[self.rng.integers(len(crowders))]
            R, arr = bank[self.rng.integers(len(bank))]
            c = np.array(np.unravel_index(free[self.rng.integers(len(free))], self.occ.shape), float) * CELL
            if self.fits(t, R, c, 0.03):
                self.place(t, R, c, None, rendered=arr)
        return self.occupied_a3 / (np.prod(self.shape) * self.voxel ** 3)

    def negative_centre(self, pick_centres, min_dist_px, near_membrane, tries=500):
        """A cytosol position: no picked complex within min_dist_px; optionally 8-25 nm
        from a membrane."""
        pc = np.asarray(pick_centres, float).reshape(-1, 3)
        Zs, Y, X = self.shape
        for _ in range(tries):
            if near_membrane and self.membranes:
                m = self.membranes[self.rng.integers(len(self.membranes))]
                p, n = self.membrane_point(m, 10)
                if p is None:
                    continue
                c = p + n * self.rng.uniform(80.0, 250.0) / self.voxel * (1 if self.rng.random() < 0.5 else -1)
            else:
                c = self.random_centre(10)
            if not (5 <= c[0] < Zs - 5):
                continue
            if len(pc):
                d = pc - c
                d[:, 1] -= Y * np.round(d[:, 1] / Y)
                d[:, 2] -= X * np.round(d[:, 2] / X)
                if np.linalg.norm(d, axis=1).min() < min_dist_px:
                    continue
            return c
        return None


def crowder_bank(t, rng, n=12):
    out = []
    for _ in range(n):
        R = random_rotation(rng)
        out.append((R, render(t, R, np.zeros(3))))
    return out
