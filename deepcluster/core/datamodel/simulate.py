"""The data model: labelled synthetic subtomograms from templates (torch, batched).

One call of ``Simulator.batch`` makes B subtomograms on the simulator's device:

1. geometry (real space): each particle gets a uniform random rotation (random
   unit quaternion), a sub-voxel shift and a voxel-size jitter, and is sampled
   straight into the output box by trilinear ``grid_sample`` from an atlas of all
   templates; context is added: 0..N crowding neighbours at random distances
   (>= touching; cut by the box edge), a curved lipid bilayer (~4 nm, two leaflets,
   random curvature), gold beads, and a smooth ice background;
2. imaging (Fourier space, one ``rfftn``; see ``imaging.py``): missing wedge and
   tilt sampling gaps, per-tilt CTF (weak-phase central-section approximation,
   no defocus gradient across the tilted specimen), dose-symmetric exposure filter,
   B-factor envelope; noise is added only inside the sampled wedge, coloured
   |k|^alpha (back-projection ramp), so the wedge is empty of signal AND noise as
   in a WBP reconstruction; optionally (training: half of them) subtomograms are
   band-limited as data acquired at a coarser voxel size (10-20 A) and
   Fourier-resampled to this one, as the embedding does with real data;
3. ``irfftn``, contrast sign, per-subtomogram normalisation (zero mean, unit std).

Contrast convention: 'dark' (default) = protein darker than the background, as in
raw cryo-ET reconstructions (the CTF at low frequency with underfocus); 'bright'
= protein brighter (the sign flipped), as after contrast inversion.

SNR convention ('particle', default): SNR = mean square of the imaged particle
over its own volume / noise variance per voxel, i.e. var(imaged particle over the
box) * box^3 / V_particle / var(noise), with V_particle the template's effective
volume (participation ratio, voxels). It is a local SNR: like a real tomogram,
where the noise per voxel does not depend on what is in the box, it does not
dilute with box size or grow with particle size, and context (neighbours,
membranes, beads) adds signal without adding noise. Negatives get the noise a
randomly drawn ('ghost') particle would have had. 'box': SNR = var(imaged
particle over the box) / var(noise). Variances come from the spectra by Parseval.

Limitation: the Fourier step treats the box as periodic, so a strong object cut by
the box edge (a bead, a membrane) rings faintly across the opposite edge.

Template frame: membrane 'attached' templates and ``membrane_bound`` classes
(``<name>_mb``) sit on a membrane at their binding site, in that fixed pose, so the
context is learnable; 'embedded' ones have the bilayer through their centre normal
to z. The binding site is the map's -z side unless ``membrane_bound`` names another
(a direction in the map's axes, or 'lobes': from the smaller lobe of a two-lobed
complex through the larger, which for a ribosome points from the small subunit
through the large one to its polypeptide exit, where ribosomes meet the ER
membrane and its translocon). ``mb_gap`` keeps the bilayer that far from the
particle (a ribosome on a translocon: 3-5 nm), ``mb_site_spread`` tilts the site by
up to that many degrees. A map rarely says where a complex binds, so
``mb_random_side`` lets that share of the ``_mb`` particles touch it on a random
side instead: the class then means "sits on a membrane", whatever the site.

Scenes (``SimulationConfig.for_scene``): 'classic' is the data model as it always
was (its draws are bit-identical); 'cellular' crowds every class and the negatives
(up to 6 neighbours, 90 %), puts unrelated membranes near 60 % of all particles and
negatives, lets a negative's neighbours reach into the box centre (crowded cytosol,
not an empty hole the size of a particle) and keeps ``_mb`` particles 3-5 nm off
their membrane at a spread binding site, so that "a membrane is in the box" is no
longer the cue for a membrane-bound class.
"""
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from deepcluster.core import DeepClusterError
from deepcluster.core.datamodel import imaging

@dataclasses.dataclass
class SimulationConfig:
    """Data-model settings. Pairs (lo, hi) are domain-randomisation ranges drawn
    per subtomogram (uniform unless said); lengths in Å unless said."""
    box: int = 40
    voxel_size: float = 10.0
    tilt_range: tuple = (-60.0, 60.0)       # degrees, tilt axis Y
    tilt_steps: tuple = (2.0, 3.0)          # one drawn per subtomogram
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_um: tuple = (2.0, 5.0)          # underfocus
    defocus_tilt_jitter_um: float = 0.1     # per-tilt defocus sd
    phase_flip_probability: float = 0.2     # CTF-corrected (phase-flipped) data
    dose: tuple = (60.0, 140.0)             # total e/Å^2, dose-symmetric order
    bfactor: tuple = (0.0, 1500.0)          # Å^2 envelope (resolution, alignment, resampling)
    snr: tuple = (0.1, 1.5)                 # log-uniform, local SNR; see the module docstring
    snr_reference: str = 'particle'         # 'particle' | 'box'
    noise_exponent: tuple = (-0.5, 1.0)     # noise amplitude ~ |k|^alpha
    max_shift: float = 1.0                  # voxels, uniform per axis (picking error)
    voxel_jitter: float = 0.04              # relative scale jitter (data resampled from other voxel sizes)
    bandlimit_probability: float = 0.0      # share of data acquired at a coarser voxel size and
    bandlimit_voxel: tuple = (10.0, 20.0)   # resampled: its spectrum stops at that Nyquist (train: 0.5)
    crowding_probability: float = 0.5
    max_neighbours: int = 3
    neighbour_gap: tuple = (0.0, 80.0)      # surface-to-surface
    membrane_probability: float = 0.2       # context membrane near any class
    membrane_thickness: float = 40.0
    membrane_radius: tuple = (250.0, 5000.0)  # curvature radius, log-uniform
    membrane_gap: tuple = (20.0, 150.0)     # context membrane to particle
    membrane_density: tuple = (0.5, 1.0)    # head groups, protein interior = 1
    mb_random_side: float = 0.0             # share of _mb particles on a random side, not their site
    mb_gap: tuple = (0.0, 0.0)              # Å between an _mb particle and its bilayer's head groups
    mb_site_spread: float = 0.0             # degrees: the binding site tilted by up to this much
    negative_overlap: float = 0.0           # share of negatives whose neighbours reach into the centre
    bead_probability: float = 0.05
    bead_diameter: tuple = (50.0, 100.0)
    bead_density: tuple = (4.0, 8.0)
    ice_amplitude: tuple = (0.0, 0.1)       # sd of the smooth ice background
    contrast: str = 'dark'                  # 'dark' | 'bright'
    normalise: bool = True

    def validate(self):
        def bad(msg):
            raise DeepClusterError(msg)
        if int(self.box) < 16:
            bad('box %s: must be at least 16 voxels' % self.box)
        if not (np.isfinite(self.voxel_size) and self.voxel_size > 0):
            bad('voxel size %s: must be positive' % self.voxel_size)
        lo, hi = self.tilt_range
        if not (-90 <= lo < hi <= 90):
            bad('tilt range %s %s: need -90 <= min < max <= 90 degrees' % (lo, hi))
        steps = (self.tilt_steps,) if np.isscalar(self.tilt_steps) else tuple(self.tilt_steps)
        if not steps or any(not 0 < s <= hi - lo for s in steps):
            bad('tilt steps %s: need 0 < step <= tilt range' % (steps,))
        for name in ('defocus_um', 'dose', 'bfactor', 'snr', 'noise_exponent', 'neighbour_gap',
                     'membrane_radius', 'membrane_gap', 'membrane_density', 'bead_diameter',
                     'bead_density', 'ice_amplitude', 'mb_gap'):
            v = getattr(self, name)
            if len(v) != 2 or not np.isfinite(v).all() or v[0] > v[1]:
                bad('%s %s: expected a finite range (low, high) with low <= high' % (name, v))
        if self.snr[0] <= 0:
            bad('snr %s: must be positive' % (self.snr,))
        if self.membrane_radius[0] <= 0:
            bad('membrane_radius %s: must be positive' % (self.membrane_radius,))
        if len(self.bandlimit_voxel) != 2 or not 0 < self.bandlimit_voxel[0] <= self.bandlimit_voxel[1]:
            bad('bandlimit_voxel %s: expected a positive range (low, high)' % (self.bandlimit_voxel,))
        for name in ('phase_flip_probability', 'crowding_probability', 'membrane_probability',
                     'bead_probability', 'bandlimit_probability', 'mb_random_side', 'negative_overlap'):
            if not 0 <= getattr(self, name) <= 1:
                bad('%s %s: must be within 0..1' % (name, getattr(self, name)))
        if self.contrast not in ('dark', 'bright'):
            bad("contrast %r: expected 'dark' or 'bright'" % self.contrast)
        if self.snr_reference not in ('particle', 'box'):
            bad("snr_reference %r: expected 'particle' or 'box'" % self.snr_reference)
        if int(self.max_neighbours) < 0 or not 0 <= self.voxel_jitter < 0.5 or self.max_shift < 0:
            bad('max_neighbours, voxel_jitter and max_shift must be >= 0 (jitter < 0.5)')
        if self.mb_gap[0] < 0 or not 0 <= self.mb_site_spread <= 90:
            bad('mb_gap must be >= 0 and mb_site_spread within 0..90 degrees')
        return self

    @classmethod
    def for_scene(cls, scene='classic', **kw):
        """The config of a named scene (see SCENES), with ``kw`` on top."""
        if scene not in SCENES:
            raise DeepClusterError('scene %r: expected one of %s' % (scene, ', '.join(SCENES)))
        return cls(**{**SCENES[scene], **kw})


# named scenes: 'classic' = the defaults above; 'cellular' = crowded cells (module docstring)
SCENES = {
    'classic': {},
    'cellular': dict(crowding_probability=0.9, max_neighbours=6, neighbour_gap=(0.0, 60.0),
                     membrane_probability=0.6, membrane_gap=(20.0, 200.0), negative_overlap=0.7,
                     mb_gap=(30.0, 50.0), mb_site_spread=25.0),
}


def _sides(n=100):
    """Unit vectors (z, y, x): the template's -z first (the default binding side), then
    a Fibonacci sphere, the sides a membrane-bound particle may touch its membrane with."""
    i = np.arange(n - 1) + 0.5
    z = 1 - 2 * i / (n - 1)
    phi = math.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.concatenate([[[-1.0, 0.0, 0.0]], np.stack([z, r * np.sin(phi), r * np.cos(phi)], 1)])


SIDES = _sides()


def binding_site(template, site=None):
    """Unit vector (z, y, x) in the template's frame towards where it meets a
    membrane: None = the map's -z side; 'lobes' = from the smaller lobe of a
    two-lobed complex through the larger (k-means on its density, 2 lobes): for a
    ribosome, small subunit -> large subunit -> polypeptide exit; else a direction
    (x, y, z) in the map's axes, as a map viewer shows them."""
    if site is None:
        return SIDES[0].copy()
    if isinstance(site, str):
        if site != 'lobes':
            raise DeepClusterError("binding site of %s: %r is neither 'lobes' nor x,y,z" % (template.name, site))
        from sklearn.cluster import KMeans
        d = template.density
        solid = d > 0.1 * d.max()
        pts, w = np.argwhere(solid).astype(np.float64), d[solid].astype(np.float64)
        km = KMeans(2, n_init=10, random_state=0).fit(pts, sample_weight=w)
        mass = np.bincount(km.labels_, weights=w, minlength=2)
        v = km.cluster_centers_[int(np.argmax(mass))] - km.cluster_centers_[int(np.argmin(mass))]
    else:
        v = np.asarray(site, dtype=np.float64)[::-1]          # x, y, z -> z, y, x
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise DeepClusterError('binding site of %s: expected 3 finite numbers x,y,z' % template.name)
    n = np.linalg.norm(v)
    if not n > 0:
        raise DeepClusterError('binding site of %s: the direction has zero length' % template.name)
    return v / n


def random_rotations(q):
    """Rotation matrices (..., 3, 3) from (..., 4) Gaussian draws: normalised they
    are uniform unit quaternions, hence uniform on SO(3)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(q.shape[:-1] + (3, 3))


class Simulator:
    """Batched subtomogram simulator for ``templates`` (all at config.voxel_size).

    ``class_names``: template names, then ``<name>_mb`` for each name in
    ``membrane_bound``, then ``'negative'`` if ``negative``. ``membrane_bound`` is a
    list of names (binding site: the map's -z side) or a {name: site} dict, a site
    being None (-z), 'lobes' or a direction (x, y, z) in the map's axes.
    """

    def __init__(self, templates, config=None, device='cpu', negative=True, membrane_bound=()):
        self.config = cfg = (config or SimulationConfig()).validate()
        self.device = dev = torch.device(device)
        templates = list(templates)
        if not templates:
            raise DeepClusterError('no templates: give structures or procedural classes')
        names = [t.name for t in templates]
        for t in templates:
            if abs(t.voxel_size - cfg.voxel_size) > 1e-3 * cfg.voxel_size:
                raise DeepClusterError('template %s is at %.3f Å/voxel, the simulation at %.3f: load it '
                                       'at the simulation voxel size' % (t.name, t.voxel_size, cfg.voxel_size))
        if len(set(names)) != len(names):
            raise DeepClusterError('duplicate template names: %s' % sorted({n for n in names if names.count(n) > 1}))
        sites = dict(membrane_bound) if isinstance(membrane_bound, dict) else {}
        membrane_bound = [membrane_bound] if isinstance(membrane_bound, str) else list(membrane_bound or ())
        for nm in membrane_bound:
            if nm not in names:
                raise DeepClusterError('membrane-bound class %r: no template of that name (have: %s)'
                                       % (nm, ', '.join(names)))
        self.templates = templates
        self.binding_sites = {t.name: binding_site(t, sites.get(t.name)) for t in templates}
        mode = {'none': 0, 'attached': 1, 'embedded': 2}
        self.class_names = names + [nm + '_mb' for nm in membrane_bound] + (['negative'] if negative else [])
        ctempl = list(range(len(names))) + [names.index(nm) for nm in membrane_bound] + [0] * negative
        cmode = [mode[t.membrane] for t in templates] + [1] * len(membrane_bound) + [0] * negative
        self.class_template = torch.tensor(ctempl, device=dev)
        self.class_membrane = torch.tensor(cmode, device=dev)
        self.class_negative = torch.tensor([False] * (len(ctempl) - negative) + [True] * negative, device=dev)
        self.class_mb = torch.tensor([False] * len(names) + [True] * len(membrane_bound) + [False] * negative,
                                     device=dev)
        self._sparse = dev.type == 'cpu'     # CPU: sample only each particle's footprint
        self._local = {}
        self._build_atlas()
        self.imaging = imaging.ImagingModel(cfg, dev)
        n = int(cfg.box)
        ax = torch.arange(n, dtype=torch.float32, device=dev)
        self._xyz_t = torch.stack(torch.meshgrid(ax, ax, ax, indexing='ij'), -1).reshape(-1, 3).T.contiguous()
        self._x2 = (self._xyz_t ** 2).sum(0)

    # ------------------------------------------------------------ precompute
    def _nbox(self, stride):
        return -(-int(self.config.box) // stride)

    def _build_atlas(self):
        """All templates side by side in one zero-padded volume, so one grid_sample
        call samples any mix of them. Each sits in a zero border wide enough that
        the CPU's particle footprints (spheres) never reach a neighbour's voxels."""
        cfg, dev = self.config, self.device
        n, smax, smin = int(cfg.box), 1 + cfg.voxel_jitter, 1 - cfg.voxel_jitter
        info, cones = [], []
        for t in self.templates:
            d = t.density.astype(np.float64)
            r = (d.shape[0] - 1) // 2
            zz, yy, xx = np.indices(d.shape) - r
            rr = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
            order = np.argsort(rr.ravel())
            cum = np.cumsum(d.ravel()[order]) / d.sum()
            support = float(rr[d > 0.01].max()) + 1.0                       # trilinear support
            side = {st: min(self._nbox(st), 2 * int(math.ceil((support * smax + 1.0) / st + 0.5)) + 1)
                    for st in (1, 2)}
            pad = r if side[1] >= n else max(r, int(math.ceil(((side[1] - 1) / 2 + 1.5) / smin)) + 1)
            solid = np.stack([zz[d > 0.2], yy[d > 0.2], xx[d > 0.2]], 1).astype(np.float64)
            sides = np.concatenate([self.binding_sites[t.name][None], SIDES[1:]])   # [0] = its site
            cos = np.clip(sides @ sides[0], -1, 1)
            cones.append(np.nonzero(np.degrees(np.arccos(cos)) <= cfg.mb_site_spread + 1e-6)[0])
            info.append(dict(r=r, pad=pad, support=support, side=side,
                             contact=float(rr.ravel()[order][np.searchsorted(cum, 0.97)]) + 0.5,
                             extent=float(rr[d > 0.03].max()) + 1.0,
                             reach=(solid @ sides.T).max(0) if len(solid) else np.zeros(len(SIDES)),
                             sides=sides,
                             veff=t.effective_volume))
        big = max(2 * i['pad'] + 1 for i in info)
        atlas = np.zeros((big, big, sum(2 * i['pad'] + 2 for i in info) + 1), np.float32)
        cen, x0 = [], 1
        for t, i in zip(self.templates, info):
            c = big // 2
            s = t.density.shape[0]
            xc = x0 + i['pad']
            atlas[c - i['r']:c - i['r'] + s, c - i['r']:c - i['r'] + s, xc - i['r']:xc - i['r'] + s] = t.density
            cen.append((c, c, xc))
            x0 += 2 * i['pad'] + 2

        def col(key):
            return torch.tensor(np.array([i[key] for i in info]), dtype=torch.float32, device=dev)
        self.atlas = torch.from_numpy(atlas)[None, None].to(dev)
        self._atlas_scale = (2.0 / (torch.tensor(atlas.shape, dtype=torch.float32) - 1)).to(dev)   # zyx
        self._atlas_centre = torch.tensor(cen, dtype=torch.float32, device=dev)
        self._support = col('support')               # radius holding all density (voxels)
        self.extent_radius = col('extent')           # density > 3% of max
        self.contact_radius = col('contact')         # 97% of the mass
        self.reach = col('reach')                    # (T, len(SIDES)): extent along each side
        self.sides = col('sides')                    # (T, len(SIDES), 3): [t, 0] = its binding site
        width = max(len(c) for c in cones)           # sides within mb_site_spread of each site
        self._cone = torch.tensor(np.stack([np.resize(c, width) for c in cones]), device=dev)
        self.effective_volume = col('veff')          # voxels (participation ratio)
        self._side = {st: torch.tensor([i['side'][st] for i in info]) for st in (1, 2)}      # CPU
        self.neighbour_pool = torch.tensor([i for i, t in enumerate(self.templates) if t.membrane == 'none']
                                           or list(range(len(self.templates))), device=dev)

    # ------------------------------------------------------------- rendering
    def _local_grid(self, s, stride, sphere):
        """Points of a cube of side s (or of its inscribed ball): (P,4) offsets
        [stride*i, 1], their squared norms, and flat indices in a box of side n/stride."""
        key = (s, stride, sphere)
        if key not in self._local:
            nb = self._nbox(stride)
            ax = torch.arange(s, dtype=torch.float32, device=self.device)
            loc = torch.stack(torch.meshgrid(ax, ax, ax, indexing='ij'), -1).reshape(-1, 3)
            if sphere:
                loc = loc[((loc - (s - 1) / 2) ** 2).sum(1) <= ((s - 1) / 2) ** 2 + 1e-6]
            flat = (loc[:, 0] * nb * nb + loc[:, 1] * nb + loc[:, 2]).long()
            loc = loc * stride
            self._local[key] = (torch.cat([loc, torch.ones_like(loc[:, :1])], 1), (loc ** 2).sum(-1), flat)
        return self._local[key]

    def _sample(self, s, stride, sphere, t, m, c, scale, mask):
        """Sample templates ``t`` (J,) through maps ``m`` (J,3,3: box offset -> template
        coordinates, ``scale`` their inverse scale) centred at ``c`` (J,3; full-grid
        voxels) on cubes (or balls) of side ``s`` of a grid of pitch ``stride`` (its
        voxel i sits at stride*i + (stride-1)/2). ``mask`` zeroes points outside each
        template's support (needed where a point may reach another template).
        Returns (values (P, J), flat index of each cube's first voxel (J,))."""
        nb = self._nbox(stride)
        loc4, loc2, _ = self._local_grid(s, stride, sphere)
        lo = torch.zeros_like(c) if s == nb else \
            (torch.round((c - 0.5 * (stride - 1)) / stride) - s // 2).clamp(0, nb - s)
        b = stride * lo + 0.5 * (stride - 1) - c                              # cube origin - centre
        a = m.transpose(1, 2) * self._atlas_scale                             # (J,3,3) zyx columns
        off = (b.unsqueeze(1) @ a).squeeze(1) + self._atlas_centre[t] * self._atlas_scale - 1
        aff = torch.cat([a, off.unsqueeze(1)], 1).flip(-1)                    # (J,4,3) -> xyz order
        j = len(t)
        grid = loc4 @ aff.permute(1, 0, 2).reshape(4, j * 3)                  # one GEMM: (P, J*3)
        vals = F.grid_sample(self.atlas, grid.view(1, -1, j, 1, 3), mode='bilinear',
                             padding_mode='zeros', align_corners=True).view(-1, j)
        if mask:
            rad = self._support[t] * scale
            d2 = loc2.unsqueeze(1) + 2 * (loc4[:, :3] @ b.T) + (b * b).sum(-1)
            vals = vals * (d2 <= rad * rad)
        lo_flat = ((lo[:, 0] * nb + lo[:, 1]) * nb + lo[:, 2]).long()
        return vals, lo_flat

    def _render(self, t, m, c, scale, weight, per_row, stride):
        """Sum objects into (B, nb^3) volumes (nb = n / stride); objects come
        row-major, ``per_row`` to a row; ``weight`` 0 drops one."""
        nb = self._nbox(stride)
        rows_n = len(t) // per_row
        if not self._sparse:                                                  # GPU: full boxes, no scatter
            vals, _ = self._sample(nb, stride, False, t, m, c, scale, True)
            return (vals * weight).T.reshape(rows_n, per_row, -1).sum(1)
        out = torch.zeros(rows_n * nb ** 3, device=self.device)
        keep = (weight > 0).nonzero().squeeze(1)
        rows = keep // per_row
        t, m, c, scale = t[keep], m[keep], c[keep], scale[keep]
        sides = self._side[stride][t]
        for s in torch.unique(sides).tolist():
            sel = (sides == s).nonzero().squeeze(1)
            # a particle's ball fits the box unclamped, and the padded atlas needs no mask
            ball = stride == 1 and s < nb
            vals, lo_flat = self._sample(s, stride, ball, t[sel], m[sel], c[sel], scale[sel], not ball)
            idx = (rows[sel] * nb ** 3 + lo_flat) + self._local_grid(s, stride, ball)[2].unsqueeze(1)
            out.index_add_(0, idx.reshape(-1), vals.reshape(-1))
        return out.view(rows_n, -1)

    def _shell(self, vol, flag, centre, radius, fn):
        """vol += fn(distance to each row's sphere surface, rows) where ``flag``."""
        rows = flag.nonzero().squeeze(1) if self._sparse else None
        if rows is not None:
            if rows.numel() == 0:
                return
            centre, radius = centre[rows], radius[rows]
        d2 = torch.addmm(self._x2 + (centre * centre).sum(-1, keepdim=True), centre, self._xyz_t, alpha=-2)
        field = fn(d2.clamp_min_(0).sqrt_().sub_(radius.unsqueeze(1)), rows)
        if rows is None:
            vol += field * flag.unsqueeze(1)
        else:
            vol.index_add_(0, rows, field)

    def contact_plane(self, rot, tmpl, touch, centre, scale, gap=None):
        """Where particles of templates ``tmpl`` in poses ``rot`` (template -> box) at
        ``centre`` meet a membrane with their side ``touch`` (indices into each
        template's sides; 0 = its binding site): the bilayer's mid-plane point, half a
        bilayer (plus ``gap`` voxels, (B,)) beyond the particle's reach along that
        side, and the side's outward unit normal, both (B, 3) in box voxels."""
        outward = torch.bmm(rot, self.sides[tmpl, touch].unsqueeze(2)).squeeze(2)
        depth = scale * (self.reach[tmpl, touch] + 0.5) + 0.5 * self.config.membrane_thickness / self.config.voxel_size
        if gap is not None:
            depth = depth + gap
        return centre + outward * depth.unsqueeze(1), outward

    # ----------------------------------------------------------------- batch
    def batch(self, labels, generator, return_clean=False, spectra=None):
        """Subtomograms (B, n, n, n) float32 on the device for class indices ``labels``.

        Deterministic for a given ``generator`` state (a torch.Generator on the
        simulator's device), and the draws do not depend on the labels: the same
        state with other labels images other particles in the same pose, context,
        CTF and noise. With ``return_clean`` also returns the noise-free volumes in
        the same units (output - clean = the noise, exactly); ``spectra``: see
        ``ImagingModel.image``."""
        cfg, dev = self.config, self.device
        n, vx, k, nt = int(cfg.box), cfg.voxel_size, int(cfg.max_neighbours), len(self.templates)
        labels = torch.as_tensor(labels, device=dev).long()
        b = labels.numel()
        g = generator

        def u(*shape, lo=0.0, hi=1.0):
            return torch.rand(*shape, generator=g, device=dev) * (hi - lo) + lo

        def gauss(*shape):
            return torch.randn(*shape, generator=g, device=dev)

        def unit(*shape):
            v = gauss(*shape, 3)
            return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)

        # ---- all random draws, in a fixed order whatever the content
        ghost = (u(b) * nt).long().clamp_max(nt - 1)
        rot = random_rotations(gauss(b, 4))
        scale = u(b, lo=1 - cfg.voxel_jitter, hi=1 + cfg.voxel_jitter)
        shift = u(b, 3, lo=-cfg.max_shift, hi=cfg.max_shift)
        self.last_poses = (rot, shift)     # the centre particles' true poses (tomograms.pose_matrices)
        crowd = u(b) < cfg.crowding_probability
        count = 1 + (u(b) * k).long()
        npool = len(self.neighbour_pool)
        nclass = self.neighbour_pool[(u(b, k) * npool).long().clamp_max(npool - 1)]
        ndir, ngap, nrot = unit(b, k), u(b, k, lo=cfg.neighbour_gap[0], hi=cfg.neighbour_gap[1]), gauss(b, k, 4)
        mem_ctx = u(b) < cfg.membrane_probability
        mdir, mgap = unit(b), u(b, lo=cfg.membrane_gap[0], hi=cfg.membrane_gap[1])
        mrad = torch.exp(u(b, lo=math.log(cfg.membrane_radius[0]), hi=math.log(cfg.membrane_radius[1])))
        mside = torch.where(u(b) < 0.5, -1.0, 1.0)
        mdens = u(b, lo=cfg.membrane_density[0], hi=cfg.membrane_density[1])
        bead = u(b) < cfg.bead_probability
        bdir, bgap = unit(b), u(b, lo=0.0, hi=cfg.neighbour_gap[1])
        brad = u(b, lo=cfg.bead_diameter[0] / 2, hi=cfg.bead_diameter[1] / 2) / vx
        bdens = u(b, lo=cfg.bead_density[0], hi=cfg.bead_density[1])
        params = self.imaging.draw(b, u, gauss, g)
        if cfg.mb_random_side > 0:     # drawn only when asked: the default stream stays as it was
            any_side = self.class_mb[labels] & (u(b) < cfg.mb_random_side)
            touch = torch.where(any_side, (u(b) * len(SIDES)).long().clamp_max(len(SIDES) - 1), 0)
        else:
            touch = torch.zeros(b, dtype=torch.long, device=dev)
        # draws of the newer options, only when asked (the classic stream stays as it was)
        tmpl0 = torch.where(~self.class_negative[labels], self.class_template[labels], ghost)
        if cfg.mb_site_spread > 0:
            pick = (u(b) * self._cone.shape[1]).long().clamp_max(self._cone.shape[1] - 1)
            touch = torch.where(touch == 0, self._cone[tmpl0, pick], touch)
        gap = u(b, lo=cfg.mb_gap[0], hi=cfg.mb_gap[1]) / vx if cfg.mb_gap[1] > 0 else None
        fill = None
        if cfg.negative_overlap > 0:
            fill = self.class_negative[labels] & (u(b) < cfg.negative_overlap)
            crowd = crowd | fill
            fill = torch.where(fill, u(b), 1.0)      # how much of a ghost's room neighbours leave

        # ---- the centre particle (for a negative: a ghost, only the SNR reference)
        positive = ~self.class_negative[labels]
        tmpl = torch.where(positive, self.class_template[labels], ghost)
        centre = shift + float(n // 2)
        s = scale.unsqueeze(1)
        particle = self._render(tmpl, rot.transpose(1, 2) / scale.view(b, 1, 1), centre, scale,
                                torch.ones(b, device=dev), 1, 1)
        # ---- neighbours at >= touching distance; context needs shape, not detail:
        # they are sampled on a half-resolution grid and interpolated up
        context = torch.zeros(b, n ** 3, device=dev)
        if k:
            active = crowd.unsqueeze(1) & (torch.arange(k, device=dev) < count.unsqueeze(1))
            own = self.contact_radius[tmpl] * (1.0 if fill is None else fill)
            dist = s * (own.unsqueeze(1) + self.contact_radius[nclass]) + ngap / vx
            ncentre = centre.unsqueeze(1) + ndir * dist.unsqueeze(2)
            nmap = random_rotations(nrot).transpose(2, 3) / scale.view(b, 1, 1, 1)
            coarse = self._render(nclass.reshape(-1), nmap.reshape(-1, 3, 3), ncentre.reshape(-1, 3),
                                  scale.repeat_interleave(k), active.reshape(-1).float(), k, 2)
            nh = self._nbox(2)
            context = F.interpolate(coarse.view(b, 1, nh, nh, nh), scale_factor=2, mode='trilinear',
                                    align_corners=False)[:, 0, :n, :n, :n].reshape(b, -1)
        # ---- membrane: fixed pose for attached/embedded/_mb classes, else maybe nearby
        mode = torch.where(positive, self.class_membrane[labels], torch.zeros_like(labels))
        attached = (mode == 1).unsqueeze(1)
        zaxis = rot[:, :, 0]                                                  # template +z in the box
        half = 0.5 * cfg.membrane_thickness / vx
        contact, outward = self.contact_plane(rot, tmpl, touch, centre, scale, gap)
        fixed_anchor = torch.where(attached, contact, centre)
        fixed_normal = torch.where(attached, outward, zaxis)
        ctx_anchor = centre + mdir * (s * self.extent_radius[tmpl].unsqueeze(1) + half + (mgap / vx).unsqueeze(1))
        has_fixed = (mode > 0).unsqueeze(1)
        anchor = torch.where(has_fixed, fixed_anchor, ctx_anchor)
        normal = torch.where(has_fixed, fixed_normal, mdir)
        rc = mrad / vx
        sig2 = 2 * max(5.0 / vx, 0.7) ** 2
        lh = 0.45 * cfg.membrane_thickness / vx
        core2 = 2 * (0.5 * lh) ** 2

        def bilayer(d, r):       # two head-group leaflets, a slightly lighter core
            a = (mdens if r is None else mdens[r]).unsqueeze(1)
            heads = torch.exp(-(d - lh) ** 2 / sig2) + torch.exp(-(d + lh) ** 2 / sig2)
            return heads.sub_(torch.exp(-d * d / core2), alpha=0.25).mul_(a)
        self._shell(context, (mode > 0) | mem_ctx, anchor + normal * (mside * rc).unsqueeze(1), rc, bilayer)

        def gold(d, r):
            a = (bdens if r is None else bdens[r]).unsqueeze(1)
            return d.div_(-0.7).tanh_().add_(1).mul_(a * 0.5)
        bcentre = centre + bdir * (s * self.extent_radius[tmpl].unsqueeze(1) + brad.unsqueeze(1)
                                   + (bgap / vx).unsqueeze(1))
        self._shell(context, bead, bcentre, brad, gold)

        # ---- imaging in Fourier space
        pspec = torch.fft.rfftn(particle.view(b, n, n, n), dim=(1, 2, 3)).reshape(b, -1)
        spec = pspec * positive.unsqueeze(1)
        has_ctx = crowd | (mode > 0) | mem_ctx | bead
        if not self._sparse:
            spec += torch.fft.rfftn(context.view(b, n, n, n), dim=(1, 2, 3)).reshape(b, -1)
        else:
            rows = has_ctx.nonzero().squeeze(1)
            if rows.numel():
                cspec = torch.fft.rfftn(context[rows].view(-1, n, n, n), dim=(1, 2, 3)).reshape(len(rows), -1)
                spec.index_add_(0, rows, cspec)
        ref = 1.0 if cfg.snr_reference == 'box' else n ** 3 / (self.effective_volume[tmpl] * scale ** 3)
        return self.imaging.image(pspec, spec, params, ref, return_clean, spectra)
