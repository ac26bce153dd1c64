"""Write the model card beside a model file (MODEL_CARD.md for default.pt,
MODEL_CARD_<name>.md for another) from its own training card and the quality
benchmarks (bench_quality.json, bench_physical*.json, bench_ceiling.json in
benchmarks/results/, or in --results for another shipped model);
a result is used only if it names this very file's sha256, so the card never
claims a number that was not measured for these weights."""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from deepcluster.core.model.network import model_sha256, read_model_file   # noqa: E402


def _init_lines(init):
    """The stage this model was fine-tuned from (its own card, recursively)."""
    hw = init.get('hardware') or {}
    lines = ['- fine-tuned from `%s` (layers taken: %s), which was trained by `%s`: %s steps x batch %s in '
             '%.1f min on %s' % (init.get('path'), init.get('layers'), init.get('command'), init.get('steps'),
                                 init.get('batch_size'), (init.get('seconds') or 0) / 60,
                                 hw.get('gpu') or hw.get('device'))]
    return lines + (_init_lines(init['init']) if init.get('init') else [])


def _capacity_lines(cfg):
    """What a wider encoder would gain (benchmarks/bench_capacity.py), for this architecture."""
    path = os.path.join(HERE, 'results', 'bench_capacity.json')
    if not os.path.exists(path):
        return []
    r = json.load(open(path))
    p = cfg.get('arch_params') or {}
    own = [n for n, v in r['variants'].items() if cfg.get('arch') == 'fast' and
           (v['widths'], v['hidden']) == (p.get('widths'), p.get('hidden'))]
    if not own:
        return []
    t, s, base = r['training'], r['cpu_speed'], own[0]
    fast_enough = [n for n in t if s[n]['x_deepfinder'] >= 50]
    best = max(fast_enough, key=lambda n: t[n]['val_acc'], default=base)
    wide = max(t, key=lambda n: t[n]['val_acc'])
    return ['- Limited by the encoder\'s capacity: trained alike from scratch (bench_capacity.json, %s), '
            'this architecture reaches validation accuracy %.3f, the best variant that stays 50x faster than '
            'DeepFinder on the CPU (%s) %.3f, and %s %.3f at %.0fx.' % (
                t[base]['hardware'], t[base]['val_acc'], best, t[best]['val_acc'], wide, t[wide]['val_acc'],
                s[wide]['x_deepfinder'])]


def _classifier_cell(r):
    c = r.get('supervised_classifier')
    return '%.3f, %.3f' % (c['accuracy'], c['v_measure']) if c else '-'


def _measured(path, sha):
    """The benchmark result at ``path`` if it was measured on the model with this sha256."""
    if not os.path.exists(path):
        return None
    r = json.load(open(path))
    if r.get('model_sha256') != sha:
        print('skipped %s: measured on another model file' % path)
        return None
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('model')
    ap.add_argument('--results', default=os.path.join(HERE, 'results'),
                    help='folder of the benchmark results measured on this model')
    a = ap.parse_args(argv)
    a.quality = os.path.join(a.results, 'bench_quality.json')
    a.physical = [os.path.join(a.results, 'bench_physical%s%s.json' % (scene, voxel))
                  for scene in ('', '_context') for voxel in ('_6.8', '', '_13.68', '_20')]
    a.paper_real = [os.path.join(a.results, f) for f in ('bench_physical_paper_real.json',
                                                         'bench_physical_paper_real_mb_random.json')]
    a.ceiling = os.path.join(a.results, 'bench_ceiling.json')
    _, cfg = read_model_file(a.model)
    card = cfg.get('training', {})
    full_sha = model_sha256(a.model)
    sha = full_sha[:16]
    hw = card.get('hardware', {})
    names = cfg.get('class_names', [])
    lines = ['# Shipped model: `%s`' % os.path.basename(a.model), '',
             '- file: %d kB, sha256 %s..., loads with `torch.load(..., weights_only=True)`'
             % (os.path.getsize(a.model) // 1024, sha),
             '- architecture: `%s` %s, %d-d feature (L2-normalised), box %d at %.2f A/voxel, '
             'contrast %s (protein dark), normalisation: %s'
             % (cfg.get('arch'), json.dumps(cfg.get('arch_params', {})), cfg.get('feature_dim', 32),
                cfg.get('box'), cfg.get('voxel_size'), cfg.get('contrast'), cfg.get('normalisation')),
             '', '## Training', '',
             '- data: %s; %d classes: %s' % (card.get('source'), len(names), ', '.join(names)),
             '- membrane proteins (in a bilayer): %s; membrane-bound variants: %s; procedural classes: %s'
             % (', '.join(card.get('embedded', [])) or '-', ', '.join(card.get('membrane_bound', [])) or '-',
                card.get('procedural')),
             '- command: `%s` (recipe: `make model`, benchmarks/train_shipped_model.py)' % card.get('command'),
             *(_init_lines(card.get('init')) if card.get('init') else []),
             '- %s steps x batch %s = %s samples, fresh simulated data every step; optimiser %s'
             % (card.get('steps'), card.get('batch_size'), card.get('samples_seen'),
                json.dumps(card.get('optimizer'))),
             '- time: %.1f min on %s (%s, torch %s), started %s'
             % ((card.get('seconds') or 0) / 60, hw.get('gpu') or hw.get('device'), hw.get('platform'),
                hw.get('torch'), card.get('started')),
             '- simulation (domain randomisation): `%s`' % json.dumps(card.get('simulation')),
             '', '## Validation (fixed simulated set, %s subtomograms)' % card.get('n_val'), '']
    metrics = cfg.get('metrics', {})
    for k, v in sorted(metrics.items()):
        if not isinstance(v, (list, dict)):
            lines.append('- %s: %s' % (k, v))
    q = _measured(a.quality, full_sha)
    if q:
        lines += ['', '## Clustering quality on held-out test sets (benchmarks/bench_quality.py)', '',
                  'k-means at k = number of true classes, %d subtomograms per class, test seeds never '
                  'used in training (%s on %s):' % (q['n_per_class'], q['model'], q['device']), '',
                  '| test set | k | V-measure | homogeneity | completeness | ARI | own classifier: accuracy, V |',
                  '|---|---|---|---|---|---|---|']
        rows = []
        for name, r in q['scenarios'].items():
            if name == 'methods':
                continue
            if 'bands' in r:
                rows += [('shrec, SNR %s' % b, r['k'], rb) for b, rb in r['bands'].items()]
            elif 'levels' in r:
                rows += [('shrec, picking error up to %s voxels' % s, r['k'], rs) for s, rs in r['levels'].items()]
            else:
                rows.append((name, r['k'], r))
        for name, k, r in rows:
            lines.append('| %s | %d | %.3f | %.3f | %.3f | %.3f | %s |' % (
                name, k, r['v_measure'], r['homogeneity'], r['completeness'], r['ari'], _classifier_cell(r)))
        lines += ['', 'The last column is the model\'s own classification head restricted to the test '
                  'classes (when it was trained on them): the ceiling k-means on its features can hardly pass.']
        m = q['scenarios'].get('methods')
        if m:
            sets = list(next(iter(m['mean_per_set'].values())))
            lines += ['', 'Clustering methods (`cluster --method`) on the same features at the true k, mean '
                      'V-measure over %d test sets per column (hdbscan: its own k, its noise as one more cluster):' % m['seeds'], '',
                      '| method | %s | all %d |' % (' | '.join(sets), m['n_sets']),
                      '|---|%s---|' % ('---|' * len(sets))]
            for meth, per in m['mean_per_set'].items():
                lines.append('| %s | %s | %.3f |' % (meth, ' | '.join('%.3f' % per[n] for n in sets), m['mean'][meth]))
    phys = [r for r in (_measured(f, full_sha) for f in a.physical) if r]
    if phys:
        lines += ['', '## Independent simulator (benchmarks/bench_physical.py)', '',
                  'SHREC 13 + negative made by code that shares nothing with the training data model: explicit '
                  'tilt series (-60..60 deg, step 3), 2D CTF, Poisson noise, weighted back-projection; '
                  'a lone particle at 3 um defocus, or a cellular scene (1-3 neighbours for half of them, '
                  'a bilayer for a fifth, defocus 2-5 um); the same specimen at every voxel size (dose per A^2, '
                  'contrast per 10 A of protein, picking error up to 10 A), resampled to the model by embed; '
                  'k-means at k = 14:', '',
                  '| voxel size (A) | scene | contrast per 10 A of protein | n | dose (e/A^2) | V-measure | homogeneity '
                  '| completeness | ARI | own classifier: accuracy, V |', '|---|---|---|---|---|---|---|---|---|---|']
        for r in phys:
            lines.append('| %g | %s | %g | %d | %g | %.3f | %.3f | %.3f | %.3f | %s |' % (
                r['voxel_size'], 'cellular' if r.get('context') else 'lone', r.get('contrast', 0.1), r['n'],
                r['dose_e_per_A2'], r['v_measure'], r['homogeneity'], r['completeness'], r['ari'],
                _classifier_cell(r)))
    real = [r for r in (_measured(f, full_sha) for f in a.paper_real) if r]
    if real:
        lines += ['', '## The paper\'s real-data test, re-made (benchmarks/bench_physical.py --paper-real)', '',
                  'As the paper\'s *C. reinhardtii* set (its section 4.1), by the independent simulator: '
                  '%d each of %s, at %g A/voxel, %g-%g um underfocus, in the cellular scene at contrast %g; '
                  'rubisco is the full L8S8 assembly built from pdb/1bxn.pdb (the model was trained on the '
                  'half complex of 1bxn.mrc). The paper: V-measure 0.76 on its real data, best at k = 3.'
                  % (real[0]['n'] // len(real[0]['classes']), ', '.join(real[0]['classes']),
                     real[0]['voxel_size'], real[0]['defocus_um'][0], real[0]['defocus_um'][1],
                     real[0]['contrast']), '',
                  '| membrane-bound side | k = 3: V | k = 4: V | k = 5: V (homogeneity, completeness) '
                  '| auto k: k, V | own classifier: accuracy |', '|---|---|---|---|---|---|']
        for r in real:
            v = {e['k']: e for e in r['sweep']}
            lines.append('| %s | %.3f | %.3f | %.3f (%.3f, %.3f) | %d, %.3f | %.3f |' % (
                {'map-z': "the map's -z (the data model's pose)",
                 'random': 'random (a binding site never trained)'}[r.get('mb_side', 'map-z')],
                v[3]['v_measure'], v[4]['v_measure'], r['v_measure'], r['homogeneity'], r['completeness'],
                r['auto_k']['k'], r['auto_k']['v_measure'], r['supervised_classifier']['accuracy']))
    ceil = _measured(a.ceiling, full_sha)
    if ceil:
        lines += ['', '## How far from the data\'s own limit (benchmarks/bench_ceiling.py)', '',
                  'The same SHREC test subtomograms classified by Bayes observers that know the data model '
                  '(the true templates, each subtomogram\'s CTF, wedge, noise spectrum and context; the SNR '
                  'averaged over its prior): with the true pose, and without it (template matching, '
                  '%d rotations x 27 shifts):'
                  % ceil['rotations'], '',
                  '| SNR | known pose: V | template matching: V (accuracy) | this model\'s classifier: '
                  'V (accuracy) | k-means on its features: V |', '|---|---|---|---|---|']
        for name, r in ceil['scenarios'].items():
            c, t = r['network']['classifier'] or {}, r['template_matching']
            lines.append('| %s | %.3f | %.3f (%.3f) | %s | %.3f |' % (
                '%g-%g (%s)' % (r['snr'][0], r['snr'][1], name) if name == 'default' else name,
                r['known_pose']['v_measure'], t['v_measure'], t['accuracy'],
                '%.3f (%.3f)' % (c['v_measure'], c['accuracy']) if c else '-', r['network']['kmeans']['v_measure']))
        lines += ['', 'Template matching is (up to its pose grid) the best any method that does not know '
                  'the pose can do, and it knows more than a real method (exact templates, CTF, noise, '
                  'context). Where it stays below a score, the data do not allow that score; between it '
                  'and this model, the gap is the model\'s (largest at low SNR).']
    lines += ['', '## Limits', '',
              '- Trained on simulated data only; the real-data gap of the paper (its section 5) '
              'remains: check classes by averaging them.',
              '- Input is resampled to 10 A/voxel and a 40^3 box: particles larger than ~35 nm are cut.',
              '- Trained at a local SNR of %s-%s; cleaner input (far cleaner than real tomograms, e.g. '
              'noise-free simulations) is outside that range and clusters worse (the SNR 100-1000 and '
              'noise-free rows above).' % tuple((card.get('simulation') or {}).get('snr', ('?', '?')))]
    if card.get('membrane_bound'):
        lines.append('- Membrane-bound classes (%s) were trained touching the membrane with their map\'s -z side '
                     '(a map does not say where a complex binds). Bound by another side, they are still '
                     'recognised by the classifier (the membrane_any_side row and the random-side row above), '
                     'but k-means on the features separates them less cleanly.'
                     % ', '.join(n + '_mb' for n in card['membrane_bound']))
    lines += _capacity_lines(cfg)
    stem = os.path.splitext(os.path.basename(a.model))[0]
    out = os.path.join(os.path.dirname(os.path.abspath(a.model)),
                       'MODEL_CARD.md' if stem == 'default' else 'MODEL_CARD_%s.md' % stem)
    with open(out + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(out + '.tmp', out)
    print('wrote %s' % out)


if __name__ == '__main__':
    main()
