"""Throughput of the data model on the 13 SHREC 2021 classes (+ negative), 40^3.

    .venv/bin/python benchmarks/bench_simulate.py [--batches N] [--threads T]

Measures (default realism: crowding, membranes, beads, ice at default rates):
- in-memory ``Simulator.batch`` on the CPU (batches of 64), at --threads and at 1 thread;
- to disk (``simulate_to_folder``: .mrc files + labels.csv + montage), on the CPU;
- in-memory on the GPU (batches of 256) when torch sees one.
Writes benchmarks/results/bench_simulate.json (+ a montage PNG) with machine info and
the load average around the runs: other jobs on the machine slow the CPU figures.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from deepcluster.core.datamodel.simulate import SimulationConfig, Simulator  # noqa: E402
from deepcluster.core.datamodel.simulated_set import simulate_to_folder, write_montage  # noqa: E402
from deepcluster.core.datamodel.structures import load_structures  # noqa: E402

SHREC = '1s3x 3qm1 3gl1 3h84 2cg9 3d2f 1u6g 3cf3 1bxn 1qvr 4cr2 5mrc 4v94'.split()


def rate_in_memory(sim, batch, batches, sync=lambda: None):
    labels = (torch.arange(batch) % len(sim.class_names)).to(sim.device)
    gen = torch.Generator(device=sim.device).manual_seed(0)
    sim.batch(labels, gen)                          # warm-up (allocations, caches)
    sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        sim.batch(labels, gen)
    sync()
    return batch * batches / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batches', type=int, default=20)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--structures', default=os.environ.get('DEEPCLUSTER_STRUCTURES')
                    or os.path.join(REPO, '..', 'shared', 'structures'))
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'bench_simulate.json'))
    ap.add_argument('--gpu-only', action='store_true', help='skip the CPU measurements')
    args = ap.parse_args()
    maps = os.path.join(args.structures, 'maps_10A')
    if not os.path.isdir(maps):
        sys.exit('bench_simulate: %s not found (set DEEPCLUSTER_STRUCTURES)' % maps)
    templates = load_structures([os.path.join(maps, n + '.mrc') for n in SHREC], 10.0)
    cfg = SimulationConfig()
    res = dict(machine=dict(platform=platform.platform(), python=platform.python_version(),
                            torch=torch.__version__, cpu_count=os.cpu_count(),
                            processor=platform.processor() or platform.machine()),
               config=dict(box=cfg.box, voxel_size=cfg.voxel_size, classes=len(SHREC) + 1,
                           crowding_probability=cfg.crowding_probability,
                           membrane_probability=cfg.membrane_probability,
                           bead_probability=cfg.bead_probability, snr=list(cfg.snr)),
               load_average_before=list(os.getloadavg()))
    sim = Simulator(templates, cfg, 'cpu')
    cpu = {}
    for threads in [] if args.gpu_only else sorted({args.threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        cpu['in_memory_per_s_%d_threads' % threads] = round(rate_in_memory(sim, 64, args.batches), 1)
    if cpu:     # other jobs on a small machine can make fewer threads faster: use the best
        best = max((v, int(k.split('_')[-2])) for k, v in cpu.items())[1]
        torch.set_num_threads(best)
    if not args.gpu_only:
        with tempfile.TemporaryDirectory() as tmp:
            n_per_class = max(1, 64 * args.batches // (len(SHREC) + 1) // 2)
            t0 = time.perf_counter()
            out = simulate_to_folder(os.path.join(tmp, 'sim'), templates, n_per_class, cfg, seed=0)
            cpu['to_disk_per_s_%d_threads' % best] = round(out['n'] / (time.perf_counter() - t0), 1)
            cpu['to_disk_n'] = out['n']
    res['cpu'] = cpu
    if torch.cuda.is_available():
        gsim = Simulator(templates, cfg, 'cuda')
        res['gpu'] = {'device': torch.cuda.get_device_name(0)}
        for batch in (64, 256, 1024):
            res['gpu']['in_memory_per_s_batch_%d' % batch] = round(
                rate_in_memory(gsim, batch, args.batches, torch.cuda.synchronize), 1)
    res['load_average_after'] = list(os.getloadavg())
    # a montage of the default data: 4 per class, central XY and XZ slices
    labels = torch.arange(len(sim.class_names)).repeat(4)
    vols = sim.batch(labels, torch.Generator().manual_seed(1)).numpy()
    by_class = {nm: [v for v, c in zip(vols, labels.tolist()) if c == i] for i, nm in enumerate(sim.class_names)}
    png = write_montage(os.path.join(os.path.dirname(args.out), 'bench_simulate_montage.png'), by_class)
    res['montage'] = os.path.relpath(png, REPO)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == '__main__':
    main()
