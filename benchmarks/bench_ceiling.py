"""How much class information do the SHREC-like test subtomograms hold? Ideal
observers on exactly bench_quality's test sets, next to the shipped model.

The data model is known, so the likelihood of a subtomogram under each class can
be computed exactly (``Simulator.batch(spectra=...)``: the same generator state
with another label images another particle in the same pose, context, CTF and
noise):

- known_pose: the Bayes classifier that knows everything but the class (pose,
  shift, neighbours, CTF, noise spectrum). No classifier can beat its accuracy;
  it shows what the pose is worth.
- template_matching: the same observer WITHOUT the pose, i.e. the best that
  alignment to the true templates could do: each subtomogram's true CTF, wedge,
  envelope, noise spectrum and context (neighbours, membranes, ice) are known,
  the particle's pose is not; likelihood averaged over ``--rotations`` random
  rotations x 27 one-voxel shifts (Bayes over a pose grid). It knows far more
  than any real method (the exact templates, CTF and context), but its pose grid
  misses sub-voxel shifts and the 4 % scale jitter, which costs it most at high
  SNR; at low SNR it is close to the ideal alignment-free observer.
- network: the shipped model's own classifier (restricted to the test classes)
  and k-means on its 32-d features (bench_quality's numbers), same subtomograms.

Where the alignment-free network comes close to template_matching, the rest of
the way to V = 1 is in the data (noise, missing wedge, small particles), not the
model. Runs the default SNR and bench_quality's SNR bands (its seeds, so the
network's numbers are bench_quality's). Writes benchmarks/results/bench_ceiling.json.
Opt-in (about 15 min on 2 cores).
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_quality as bq                                                  # noqa: E402

from deepcluster.core.analysis import evaluation  # noqa: E402
from deepcluster.core.inference.embed import Embedder                                  # noqa: E402
from deepcluster.core.model.network import model_sha256                           # noqa: E402
from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator, random_rotations  # noqa: E402
from deepcluster.core.datamodel.structures import load_structures                     # noqa: E402


class Observers:
    """Log-likelihoods of one batch under each class hypothesis."""

    def __init__(self, sim, rotations, kmax, seed=5):
        n = self.n = int(sim.config.box)
        self.sim = sim
        lo, hi = sim.config.snr                                 # the data model's SNR prior
        self.snr_grid = torch.exp(torch.linspace(math.log(lo), math.log(hi), 12, dtype=torch.float64))
        self.weight = sim.imaging.weight.double().clone()      # Hermitian multiplicity
        self.weight[0] = 0                                      # the DC is normalised away
        ax, axr = torch.fft.fftfreq(n, 1.0 / n), torch.fft.rfftfreq(n, 1.0 / n)
        k = torch.stack(torch.meshgrid(ax, ax, axr, indexing='ij'), -1).reshape(-1, 3).double()
        self.low = (k.norm(dim=1) <= kmax).nonzero().squeeze(1)  # templates hold ~no power beyond
        shifts = torch.stack(torch.meshgrid(*[torch.arange(-1.0, 2.0, dtype=torch.float64)] * 3,
                                            indexing='ij'), -1).reshape(-1, 3)
        self.phase = torch.exp(2j * math.pi * (shifts @ k[self.low].T) / n).to(torch.complex64)
        rots = random_rotations(torch.randn(rotations, 4, generator=torch.Generator().manual_seed(seed)))
        centre = torch.full((rotations, 3), float(n // 2))
        self.spectra = []                                       # per template: (R, F_low) complex64
        for t in range(len(sim.templates)):
            vol = sim._render(torch.full((rotations,), t), rots.transpose(1, 2), centre,
                              torch.ones(rotations), torch.ones(rotations), 1, 1).view(rotations, n, n, n)
            self.spectra.append(torch.fft.rfftn(vol, dim=(1, 2, 3)).reshape(rotations, -1)[:, self.low])

    def observe(self, obs, negative):
        """What every hypothesis is scored on (``negative``: which are negatives):
        the observation less its true context (neighbours, membranes, ice), i.e.
        the particle + noise, and the whitening weights of the observed noise."""
        sd = obs['noise_sd'].double()
        live = sd > 0
        ivar = torch.where(live, self.weight / torch.where(live, sd, 1.0) ** 2, 0.0)
        context = obs['clean'] - obs['particle'] * (~negative).unsqueeze(1)
        return (obs['observed'] - context).to(torch.complex128), ivar, sd.sum(1)

    def score(self, seen, hyp, cls):
        """(known_pose, template_matching) log-likelihood ratios (B,) of the
        observation ``seen`` (from ``observe``) for class ``cls`` (imaged as
        ``hyp``, same draws) against 'no particle'.

        The observers get the same for every class, so only the particle tells the
        classes apart; the SNR is not known: the likelihood is averaged over the
        data model's SNR prior (log-uniform), which sets the particle's amplitude
        against the noise, a = sqrt(snr / snr_c) sd_obs / sd_c, where hypothesis c
        at SNR snr_c has noise sd_c (the same spectrum, another scale)."""
        y, ivar, sd_total = seen
        if self.sim.class_negative[cls]:
            zero = torch.zeros(len(y), dtype=torch.float64)
            return zero, zero
        unit = sd_total / hyp['noise_sd'].double().sum(1) / hyp['snr'].double().sqrt()
        amp = unit.unsqueeze(1) * self.snr_grid.sqrt()                                # (B, S)
        p = hyp['particle'].to(torch.complex128)
        known = _marginal((ivar * (y.conj() * p).real).sum(1, keepdim=True),
                          (ivar * p.abs() ** 2).sum(1, keepdim=True), amp)
        t = self.spectra[int(self.sim.class_template[cls])]
        f, iv, yl = hyp['filter'][:, self.low].double(), ivar[:, self.low], y[:, self.low]
        b, r = len(y), len(t)
        ss = ((t.abs() ** 2).double() @ (f * f * iv).T).T.unsqueeze(1)                # (B, 1, R)
        g = (yl.conj() * f * iv).to(torch.complex64)                                  # (B, F)
        poses = len(self.phase) * r                                                   # shifts x rotations
        cross = ((g.unsqueeze(1) * self.phase).reshape(b * len(self.phase), -1) @ t.T).real.double()
        return known, _marginal(cross.view(b, poses), ss.expand(b, len(self.phase), r).reshape(b, poses), amp)


def _marginal(ys, ss, amp):
    """log mean over poses (columns of ys, ss) and amplitudes (columns of amp) of
    L(a S) / L(0) = exp(a ys - a^2 ss / 2), ys = Re<y, S>, ss = <S, S> whitened
    full-spectrum sums (which count each independent coefficient twice: the
    complex Gaussian's exp(-|r|^2 / sd^2) over half of them)."""
    a = amp.unsqueeze(1)                                                              # (B, 1, S)
    ll = a * ys.unsqueeze(2) - 0.5 * a * a * ss.unsqueeze(2)
    return torch.logsumexp(ll.reshape(len(ll), -1), 1) - math.log(ll[0].numel())


@torch.inference_mode()
def run(sim, observers, n_per_class, seed, batch=128):
    """Simulate the test set exactly as bench_quality does and classify it."""
    c = len(sim.class_names)
    labels = torch.arange(c).repeat_interleave(n_per_class)
    gen = torch.Generator().manual_seed(seed)
    vols, known, matched = [], [], []
    for a in range(0, len(labels), batch):
        lb = labels[a:a + batch]
        state, obs = gen.get_state(), {}
        vols.append(sim.batch(lb, gen, spectra=obs))
        after = gen.get_state()
        seen = observers.observe(obs, sim.class_negative[lb])
        scores = []
        for cls in range(c):
            gen.set_state(state)
            hyp = {}
            sim.batch(torch.full_like(lb, cls), gen, spectra=hyp)
            scores.append(observers.score(seen, hyp, cls))
        gen.set_state(after)
        known.append(torch.stack([s[0] for s in scores], 1).argmax(1))
        matched.append(torch.stack([s[1] for s in scores], 1).argmax(1))
    names = np.array(sim.class_names)
    return (torch.cat(vols).numpy(), names[labels.numpy()],
            {'known_pose': names[torch.cat(known).numpy()], 'template_matching': names[torch.cat(matched).numpy()]})


def summary(truth, pred):
    res = evaluation.evaluate(truth, pred)
    out = {'accuracy': round(float((pred == truth).mean()), 4)}
    out.update({m: round(res[m], 4) for m in ('v_measure', 'homogeneity', 'completeness')})
    out['contingency'] = res['contingency']
    return out


BANDS = ((0.1, 0.3), (0.3, 1.0), (1.0, 3.0), (3.0, 10.0))


def scenario(tpl, snr, seed, a, emb):
    sim = Simulator(tpl, SimulationConfig(**({'snr': tuple(snr)} if snr else {})), negative=True)
    vols, truth, preds = run(sim, Observers(sim, a.rotations, a.kmax), a.n_per_class, seed)
    out = {'n': len(truth), 'seed': seed, 'snr': list(snr or SimulationConfig.snr)}
    out.update({name: summary(truth, pred) for name, pred in preds.items()})
    net = bq.score(emb, vols, truth, 10.0, 0)
    out['network'] = {'kmeans': {m: net[m] for m in ('v_measure', 'homogeneity', 'completeness')},
                      'classifier': net.get('supervised_classifier')}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--classes', nargs='+', default=bq.SHREC, help='test classes (default: the 13 SHREC)')
    ap.add_argument('--rotations', type=int, default=1000, help='pose grid of the template matcher')
    ap.add_argument('--kmax', type=float, default=16.0,
                    help='highest frequency (cycles/box) the matcher correlates; the 30 A maps hold '
                         '< 0.5 %% of their power beyond 16 at 10 A/voxel')
    ap.add_argument('--snr', type=float, nargs=2, default=None, help='one SNR range instead of the default '
                    'set and bench_quality\'s SNR bands')
    ap.add_argument('--n-per-class', type=int, default=bq.N_PER_CLASS)
    ap.add_argument('--seed', type=int, default=bq.TEST_SEED, help='default: bench_quality\'s shrec set')
    ap.add_argument('--model', default=None)
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_ceiling.json'))
    a = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.time()
    maps = os.path.join(bq.structures_root(), 'maps_10A')
    tpl = load_structures([os.path.join(maps, s + '.mrc') for s in a.classes], 10.0)
    emb = Embedder.from_file(a.model)
    runs = [('%g-%g' % tuple(a.snr), a.snr, a.seed)] if a.snr else \
        [('default', None, a.seed)] + [('%g-%g' % b, b, bq.TEST_SEED + 4) for b in BANDS]   # as bench_quality
    result = {'classes': list(a.classes) + ['negative'], 'rotations': a.rotations, 'kmax': a.kmax,
              'model_sha256': model_sha256(a.model), 'torch': torch.__version__,
              'machine': platform.machine(), 'scenarios': {}}
    for name, snr, seed in runs:
        r = result['scenarios'][name] = scenario(tpl, snr, seed, a, emb)
        net = r['network']
        print('SNR %-8s known pose %.3f | template matching %.3f (accuracy %.3f) | network classifier %s, '
              'k-means %.3f' % (name, r['known_pose']['v_measure'], r['template_matching']['v_measure'],
                                r['template_matching']['accuracy'],
                                net['classifier'] and net['classifier']['v_measure'], net['kmeans']['v_measure']),
              flush=True)
    result['seconds'] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + '.tmp', 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(a.out + '.tmp', a.out)
    print('wrote %s (%.0f s)' % (a.out, result['seconds']))


if __name__ == '__main__':
    main()
