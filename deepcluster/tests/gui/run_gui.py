"""``make test-gui``: the demo project in the real Scipion GUI on a virtual X
display (Xvfb), a screenshot of every deepcluster form and viewer, and checks.

  1. a project (the demo chain + a short train run + a classify run with auto k)
  2. the GUI line the demo prints, run as printed: the project window must open
  3. drive_gui.py: the project window, the classify form, every viewer, the
     interactive map with a lasso selection registered as a new run
  4. test_gui.py (pytest) on the same display
  5. the README's screenshots copied, resized, into docs/images/

Usage: python run_gui.py [--out docs/images] [--work build/gui]. Needs Xvfb,
xdotool and ImageMagick's import (the Makefile installs them). Exit 1 on failure.
"""
import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PROJECT = 'deepcluster_gui'
# screenshot name in the work folder -> name in docs/images (the README's set)
README_SHOTS = {'project_tomography_view': 'project_tomography_view.png',
                'classify_form': 'classify_form.png',
                'classes_gallery': 'classes_gallery.png',
                'map_lasso_selection': 'map_lasso_selection.png',
                'metrics_vs_k': 'metrics_vs_k.png'}
MAX_WIDTH = 1300
MAX_BYTES = 300_000


def log(msg):
    print('[test-gui] %s' % msg, flush=True)


def start_xvfb():
    for n in range(91, 120):
        if not os.path.exists('/tmp/.X11-unix/X%d' % n) and not os.path.exists('/tmp/.X%d-lock' % n):
            break
    proc = subprocess.Popen(['Xvfb', ':%d' % n, '-screen', '0', '1600x1000x24', '-nolisten', 'tcp'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists('/tmp/.X11-unix/X%d' % n):
            return proc, ':%d' % n
        time.sleep(0.1)
    proc.kill()
    raise SystemExit('Xvfb did not start')


def grab_window(name_regex, png, env, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        r = subprocess.run(['xdotool', 'search', '--onlyvisible', '--name', name_regex],
                           capture_output=True, text=True, env=env)
        ids = r.stdout.split()
        if ids:
            time.sleep(4)      # let it draw the runs graph
            subprocess.run(['import', '-window', ids[-1], png], check=True, env=env)
            return True
        time.sleep(1)
    return False


def shrink(src, dst):
    from PIL import Image
    img = Image.open(src).convert('RGB')
    if img.width > MAX_WIDTH:
        img = img.resize((MAX_WIDTH, int(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
    img.save(dst, optimize=True)
    while os.path.getsize(dst) > MAX_BYTES:   # palette PNG, then smaller (noisy slices)
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
        if os.path.getsize(dst) <= MAX_BYTES:
            break
        img = img.resize((int(img.width * 0.85), int(img.height * 0.85)), Image.LANCZOS)
    return os.path.getsize(dst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(REPO, 'docs', 'images'))
    ap.add_argument('--work', default=os.path.join(REPO, 'build', 'gui'))
    ap.add_argument('--reuse', action='store_true', help='keep the project of a previous run')
    args = ap.parse_args()
    work = os.path.abspath(args.work)
    shots = os.path.join(work, 'shots')
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(shots, exist_ok=True)
    env = dict(os.environ, SCIPION_HOME=os.path.join(work, 'scipion'),
               SCIPION_USER_DATA=os.path.join(work, 'scipion', 'data'))
    env.pop('MPLBACKEND', None)
    failures = []
    xvfb, display = start_xvfb()
    env['DISPLAY'] = display
    log('Xvfb on %s' % display)
    try:
        project_dir = os.path.join(env['SCIPION_USER_DATA'], 'projects', PROJECT)
        if not (args.reuse and os.path.isdir(project_dir)):
            log('1. preparing the project (demo chain, train, classify) ...')
            subprocess.run([sys.executable, os.path.join(HERE, 'prepare_project.py'), PROJECT,
                            os.path.join(work, 'report')], check=True, env=env, cwd=work)

        log('2. the GUI line the demo prints, as printed ...')
        line = subprocess.run([sys.executable, '-c', 'from deepcluster import headless; '
                               'headless.configure(); from deepcluster.demo import gui_command; '
                               'print(gui_command(%r))' % PROJECT],
                              capture_output=True, text=True, check=True, env=env).stdout.strip()
        log('   %s' % line)
        clean = {k: v for k, v in env.items() if not k.startswith('SCIPION_')}
        gui = subprocess.Popen(['bash', '-c', line], env=clean, start_new_session=True,
                               stdout=open(os.path.join(work, 'launcher.log'), 'w'),
                               stderr=subprocess.STDOUT)
        ok = grab_window(PROJECT,
                         os.path.join(shots, 'launcher_project_window.png'), env)
        os.killpg(gui.pid, signal.SIGTERM)
        gui.wait(timeout=30)
        log('   %s' % ('the project window opened' if ok else 'FAILED: no project window'))
        if not ok:
            failures.append('the printed GUI line does not open the project '
                            '(see %s)' % os.path.join(work, 'launcher.log'))

        log('3. driving the project window, forms and viewers ...')
        try:                             # a dialog left open would wait for a click forever
            r = subprocess.run([sys.executable, os.path.join(HERE, 'drive_gui.py'), PROJECT, shots],
                               env=env, cwd=work, timeout=900)
            if r.returncode:
                failures.append('drive_gui.py failed (%d)' % r.returncode)
        except subprocess.TimeoutExpired:
            failures.append('drive_gui.py did not finish within 15 min (a dialog waiting?)')

        log('4. pytest test_gui.py on the display ...')
        r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                            os.path.join(REPO, 'deepcluster', 'tests', 'test_gui.py')],
                           env=dict(env, SCIPION_HOME=os.path.join(work, 'pytest-scipion'),
                                    SCIPION_USER_DATA=os.path.join(work, 'pytest-scipion', 'data')),
                           cwd=REPO)
        if r.returncode:
            failures.append('test_gui.py failed')
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)

    os.makedirs(args.out, exist_ok=True)
    for src_name, dst_name in README_SHOTS.items():
        src = os.path.join(shots, src_name + '.png')
        if os.path.exists(src):
            size = shrink(src, os.path.join(args.out, dst_name))
            log('%s (%d KB)' % (os.path.join(args.out, dst_name), size // 1024))
    log('all screenshots: %s' % ' '.join(sorted(glob.glob(os.path.join(shots, '*.png')))))
    if failures:
        for f in failures:
            log('FAILED: %s' % f)
        sys.exit(1)
    log('passed')


if __name__ == '__main__':
    main()
