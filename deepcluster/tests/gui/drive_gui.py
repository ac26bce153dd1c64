"""Drive the real Scipion project window (pyworkflow's ProjectWindow, what
``scipion project NAME`` opens) on an X display and screenshot each deepcluster
form and viewer: python drive_gui.py PROJECT OUT_DIR

Tk's mainloop is replaced by explicit event pumping, so the script opens a
window, waits for it to draw, grabs the screen (ImageMagick ``import``) and
crops it to that window. Checks along the way (backend unchanged, the map's
selection registered as a new run) make it a test: exit 1 on failure.
"""
import os
import subprocess
import sys
import time
import tkinter as tk

from deepcluster import headless

SHOTS = []
FAILURES = []


def pump(root, seconds):
    end = time.time() + seconds
    while time.time() < end:
        root.update()
        time.sleep(0.03)


def shot(window, name, out):
    """Screenshot of the Tk window ``window`` (a Tk/Toplevel) as OUT/name.png."""
    window.lift()
    window.update()
    time.sleep(0.4)
    window.update()
    full = os.path.join(out, '.screen.png')
    subprocess.run(['import', '-window', 'root', full], check=True)
    from PIL import Image
    x, y = window.winfo_rootx(), window.winfo_rooty()
    w, h = window.winfo_width(), window.winfo_height()
    img = Image.open(full).crop((x, y, x + w, y + h)).convert('RGB')
    png = os.path.join(out, name + '.png')
    img.save(png, optimize=True)
    os.remove(full)
    SHOTS.append(png)
    print('[gui] %s (%dx%d)' % (png, w, h), flush=True)
    return png


def check(cond, what):
    print('[gui] %s: %s' % ('ok' if cond else 'FAILED', what), flush=True)
    if not cond:
        FAILURES.append(what)


def newest_toplevel(root, before):
    tops = [w for w in toplevels(root) if w not in before and w.winfo_viewable()]
    return tops[-1] if tops else None


def _descendants(w):
    for c in w.winfo_children():
        yield c
        yield from _descendants(c)


def toplevels(root):
    """Every Toplevel under root, at any depth (a viewer's windows are children of
    the viewer's form, not of the project window)."""
    found, todo = [], list(root.winfo_children())
    while todo:
        w = todo.pop(0)
        if isinstance(w, tk.Toplevel):
            found.append(w)
        todo.extend(w.winfo_children())
    return found


def hide_all(root):
    for w in toplevels(root):
        w.withdraw()


def main(project_name, out):
    headless.configure()
    os.environ.pop('MPLBACKEND', None)
    tk.Misc.mainloop = lambda self, n=0: None     # we pump events ourselves
    import matplotlib
    from pyworkflow.gui.project import ProjectWindow
    from pyworkflow.project import Manager
    from deepcluster.protocols import ProtDeepClusterClassify
    from deepcluster.viewers import (DeepClusterClassesGalleryViewer, DeepClusterClassesViewer,
                                     DeepClusterEmbedViewer, DeepClusterTrainViewer)

    manager = Manager()
    path = manager.getProjectPath(project_name)
    os.chdir(path)
    pw = ProjectWindow(path)
    pw.show()
    root = pw.root
    root.geometry('1500x900+0+0')
    pump(root, 4)
    for w in _descendants(root):        # a wider protocol tree: its names readable
        if isinstance(w, tk.PanedWindow) and str(w.cget('orient')) == 'horizontal':
            try:
                w.paneconfig(w.panes()[0], width=330)
                w.sash_place(0, 330, 1)
            except tk.TclError as e:
                print('[gui] (could not widen the protocol tree: %s)' % e)
            break
    pump(root, 1)
    backend = matplotlib.get_backend()
    check(backend.lower() == 'tkagg', 'the project window sets the TkAgg backend (%s)' % backend)
    project = pw.project
    runs = {p.getClassName(): p for p in project.getRuns()}
    try:                                 # the cluster run selected: its summary below the graph
        pw.getViewWidget()._selectItemProtocol(runs['ProtDeepClusterCluster'])
    except Exception as e:
        print('[gui] (could not select the cluster run: %s)' % e)
    pump(root, 1.5)
    shot(root, 'project_tomography_view', out)
    clu, cfy = runs['ProtDeepClusterCluster'], runs['ProtDeepClusterClassify']
    emb, train = runs['ProtDeepClusterEmbed'], runs['ProtDeepClusterTrain']

    # the classify form, as "new protocol" opens it (the model choice explicit)
    before = toplevels(root)
    prot = project.newProtocol(ProtDeepClusterClassify)
    pw.getViewWidget()._openProtocolForm(prot)
    pump(root, 2)
    form = newest_toplevel(root, before)
    check(form is not None, 'the classify form opens')
    if form is not None:
        form.geometry('900x860+0+0')
        pump(root, 1)
        shot(form, 'classify_form', out)
        check(prot.modelSource.get() == 0, 'a new classify form uses the shipped model')
    hide_all(root)

    def viewer_form(viewerClass, protocol, name):
        """The viewer "Analyze results" opens: the first Scipion finds for the run."""
        from pwem import Domain
        from pyworkflow.viewer import DESKTOP_TKINTER
        found = Domain.findViewers(protocol, DESKTOP_TKINTER)
        check(found and found[0].__name__ == viewerClass.__name__, 'Analyze results opens %s for %s'
              % (found[0].__name__ if found else None, protocol.getClassName()))
        viewerClass = found[0] if found else viewerClass
        before = toplevels(root)
        viewer = viewerClass(project=project, protocol=protocol, parent=pw)
        viewer.visualize(protocol, windows=pw)
        pump(root, 1.5)
        win = newest_toplevel(root, before)
        if win is not None:
            shot(win, name, out)
        return viewer

    def show_view(viewer, key, name, size=None):
        before = toplevels(root)
        views = viewer._getVisualizeDict()[key](key)
        view = views[0]
        result = view.show()
        pump(root, 1.5)
        win = newest_toplevel(root, before)
        check(win is not None, '%s opens a window' % key)
        if win is not None:
            if size:
                win.geometry(size)
                pump(root, 1)
            shot(win, name, out)
        check(matplotlib.get_backend() == backend, 'backend unchanged after %s' % key)
        return result, win

    # the classes viewer (fixed-k demo run) and its figures
    v = viewer_form(DeepClusterClassesViewer, clu, 'classes_viewer_form')
    check('showKSelection' not in v._getVisualizeDict(), 'no "Choice of k" for a fixed-k run')
    show_view(v, 'showGallery', 'classes_gallery')
    show_view(v, 'showMetrics', 'metrics_vs_k')
    show_view(v, 'showEmbedding', 'embedding_tsne')
    hide_all(root)
    v2 = viewer_form(DeepClusterClassesViewer, cfy, 'classify_viewer_form')
    check('showKSelection' in v2._getVisualizeDict(), '"Choice of k" for the auto-k run')
    show_view(v2, 'showKSelection', 'k_selection')
    hide_all(root)
    t = viewer_form(DeepClusterTrainViewer, train, 'train_viewer_form')
    show_view(t, 'showCurves', 'training_curves')
    hide_all(root)
    e = viewer_form(DeepClusterEmbedViewer, emb, 'embed_viewer_form')
    show_view(e, 'showEmbedding', 'embed_tsne')
    hide_all(root)

    # the classes gallery that needs no xmipp, on the classes object itself
    before = toplevels(root)
    g = DeepClusterClassesGalleryViewer(project=project, parent=pw)
    for view in g._visualize(clu.classes):
        view.show()
    pump(root, 1.5)
    win = newest_toplevel(root, before)
    check(win is not None, 'the classes gallery viewer opens')
    if win is not None:
        shot(win, 'classes_gallery_any_set', out)
    hide_all(root)

    # the interactive map: lasso around one class, click a point, register a subset
    window, win = show_view(v, 'showMap', 'map_opening', size='1400x860+0+0')
    s = window.session
    end = time.time() + 300
    while (s.map is None or window._busy is not None) and time.time() < end:
        pump(root, 0.5)                  # until the window has taken the map (it clears the selection)
    check(s.map is not None, 'the map is computed (%s)' % window.status.get())
    import numpy as np
    from scipy.spatial import ConvexHull
    sizes = {c: int((s.classes == c).sum()) for c in s.classIds()}
    def is_particle(c):                  # a class of particles, not of empty boxes
        if s.truth is None:
            return True
        labels = [t for t, k in zip(s.truth, s.classes) if k == c]
        return max(set(labels), key=labels.count) != 'negative'
    target = max((c for c in sizes if is_particle(c)), key=sizes.get)
    pts = s.xy[s.classes == target]
    hull = pts[ConvexHull(pts).vertices]
    centre = hull.mean(0)
    lasso = centre + 1.15 * (hull - centre)
    window.onLasso([tuple(p) for p in lasso])
    check(int(s.mask.sum()) >= sizes[target], 'the lasso selects class %d (%d of %d selected)'
          % (target, int(s.mask.sum()), sizes[target]))
    window.tool.set('pick')
    window._setTool()
    window.showSlices(s.pick(pts[0]))
    pump(root, 1.5)
    shot(win, 'map_lasso_selection', out)
    window.colour.set('distance to class centre')
    window.redraw()
    pump(root, 1)
    shot(win, 'map_distance_colouring', out)
    n_runs = len(project.getRuns())
    prot = window.register('subset')
    check(prot is not None, 'the selection is registered as a new run')
    end = time.time() + 120
    while time.time() < end:
        pump(root, 1)
        done = project.getProtocol(prot.getObjId())
        if done.isFinished() or done.isFailed():
            break
    done = project.getProtocol(prot.getObjId())
    check(done.isFinished() and done.subtomograms.getSize() == int(s.mask.sum()),
          'the new run holds the %d selected subtomograms' % int(s.mask.sum()))
    hide_all(root)
    pw.getViewWidget().refreshRuns()
    pump(root, 3)
    check(len(project.getRuns()) == n_runs + 1, 'the project lists the new run')
    shot(root, 'project_after_selection', out)
    print('[gui] %d screenshots, %d failures' % (len(SHOTS), len(FAILURES)), flush=True)
    for f in FAILURES:
        print('[gui] FAILED: %s' % f, flush=True)
    sys.stdout.flush()
    os._exit(1 if FAILURES else 0)


if __name__ == '__main__':
    main(sys.argv[1], os.path.abspath(sys.argv[2]))
