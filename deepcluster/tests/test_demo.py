"""``make demo`` end to end, small: a real headless Scipion project and the report."""
import json
import os

from deepcluster.cli import main


def test_demo_runs_the_chain_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / 'report'
    cwd = os.getcwd()
    main(['demo', '--out', str(out), '--procedural', '3', '--n-per-class', '8',
          '--project', 'deepcluster_demo_test'])
    assert os.getcwd() == cwd
    printed = capsys.readouterr().out
    assert 'Report (figures, metrics.json, summary.txt): %s' % out in printed
    for png in ('embedding.png', 'gallery.png', 'contingency.png', 'metrics_vs_k.png',
                'cluster_sizes.png', 'simulated_montage.png'):
        assert (out / png).stat().st_size > 5000, png
    metrics = json.load(open(out / 'metrics.json'))['metrics']
    assert metrics['n'] == 32 and 0 <= metrics['v_measure'] <= 1
    summary = (out / 'summary.txt').read_text()
    assert '4 true classes' in summary and 'V-measure' in summary and 'Selected for averaging' in summary
    assert not os.path.exists(str(out) + '.tmp')
