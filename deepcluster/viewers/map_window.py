"""The interactive 2-D map window (Tk): a thin face over MapSession.

matplotlib draws into a Figure on a FigureCanvasTkAgg embedded in this window;
matplotlib's global backend is never touched (no pyplot, no matplotlib.use), so
the rest of the Scipion GUI keeps its plot windows. Lasso and box selection use
matplotlib.widgets; a click with the "pick" tool shows the item's central slices.
"""
import threading
import tkinter as tk
from tkinter import messagebox, ttk

import numpy as np
from matplotlib.figure import Figure
from pyworkflow.viewer import View

from .map_session import COLOUR_MODES, MapSession

METHOD_CHOICES = (('t-SNE', 'tsne'), ('UMAP', 'umap'), ('PCA (fast)', 'pca'))
TOOLS = ('lasso', 'box', 'pick')


class EmbeddingMapView(View):
    """What the viewer handler returns: the window opens on show()."""

    def __init__(self, protocol, tkParent=None, method='tsne'):
        self.protocol = protocol
        self.tkParent = tkParent
        self.method = method
        self.window = None

    def show(self):
        self.window = EmbeddingMapWindow(MapSession(self.protocol), master=self.tkParent,
                                         method=self.method)
        self.window.start()
        return self.window


class EmbeddingMapWindow:
    def __init__(self, session, master=None, method='tsne'):
        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk
        self.session = session
        self.ownRoot = master is None
        self.root = tk.Tk() if master is None else tk.Toplevel(master)
        self.root.title('deepcluster - 2-D map of %d subtomograms (%s)'
                        % (session.n, session.protocol.getObjLabel() or session.protocol.getRunName()))
        self.root.geometry('1280x800')
        self.method = tk.StringVar(self.root, method)
        self.colour = tk.StringVar(self.root, 'class' if session.hasClasses or session.truth is None
                                   else 'true label')
        self.tool = tk.StringVar(self.root, 'lasso')
        self.add = tk.BooleanVar(self.root, False)
        self.status = tk.StringVar(self.root, '')
        self.selector = None
        self._busy = None

        left = ttk.Frame(self.root)
        left.pack(side=tk.LEFT, fill=tk.BOTH, expand=True)
        self.fig = Figure(figsize=(8, 7), dpi=100)
        self.ax = self.fig.add_subplot(1, 1, 1)
        self.canvas = FigureCanvasTkAgg(self.fig, master=left)
        NavigationToolbar2Tk(self.canvas, left).update()
        self.canvas.get_tk_widget().pack(side=tk.TOP, fill=tk.BOTH, expand=True)
        self.canvas.mpl_connect('button_press_event', self._onClick)
        self._buildPanel()

    # ------------------------------------------------------------------ layout
    def _buildPanel(self):
        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg
        s = self.session
        panel = ttk.Frame(self.root, padding=6)
        panel.pack(side=tk.RIGHT, fill=tk.Y)
        box = ttk.LabelFrame(panel, text='Map', padding=4)
        box.pack(fill=tk.X)
        for text, value in METHOD_CHOICES:
            ttk.Radiobutton(box, text=text, value=value, variable=self.method,
                            command=self.computeMap).pack(side=tk.LEFT)
        box = ttk.LabelFrame(panel, text='Colour by', padding=4)
        box.pack(fill=tk.X, pady=4)
        for mode in COLOUR_MODES:
            state = tk.DISABLED if (mode == 'true label' and s.truth is None) else tk.NORMAL
            ttk.Radiobutton(box, text=mode, value=mode, variable=self.colour, state=state,
                            command=self.redraw).pack(anchor=tk.W)
        box = ttk.LabelFrame(panel, text='Select with', padding=4)
        box.pack(fill=tk.X)
        for t in TOOLS:
            ttk.Radiobutton(box, text={'pick': 'click: show slices'}.get(t, t), value=t,
                            variable=self.tool, command=self._setTool).pack(side=tk.LEFT)
        ttk.Checkbutton(panel, text='add to the selection', variable=self.add).pack(anchor=tk.W)
        box = ttk.LabelFrame(panel, text='Whole classes (all members, drawn or not)', padding=4)
        box.pack(fill=tk.X, pady=4)
        self.classList = tk.Listbox(box, selectmode=tk.EXTENDED, height=6, exportselection=False)
        for c in s.classIds():
            self.classList.insert(tk.END, 'class %d (%d)' % (c, int((s.classes == c).sum())))
        self.classList.pack(fill=tk.X)
        ttk.Button(box, text='Select these classes', command=self.selectClasses).pack(fill=tk.X)
        ttk.Label(panel, textvariable=self.status, wraplength=330, justify=tk.LEFT,
                  foreground='#1f3f7f').pack(fill=tk.X, pady=4)
        ttk.Button(panel, text='Clear selection', command=self.clear).pack(fill=tk.X)
        box = ttk.LabelFrame(panel, text='Make it a new output of the project', padding=4)
        box.pack(fill=tk.X, pady=4)
        ttk.Button(box, text='Subset of subtomograms',
                   command=lambda: self.register('subset')).pack(fill=tk.X)
        if s.hasClasses:
            ttk.Button(box, text='Classes: selection as a new class (split)',
                       command=lambda: self.register('split')).pack(fill=tk.X)
            ttk.Button(box, text='Classes: merge the classes it touches',
                       command=lambda: self.register('merge')).pack(fill=tk.X)
        box = ttk.LabelFrame(panel, text='Clicked subtomogram: central slices', padding=2)
        box.pack(fill=tk.X)
        self.sliceFig = Figure(figsize=(3.4, 1.3), dpi=100)
        self.sliceAxes = [self.sliceFig.add_subplot(1, 3, i + 1) for i in range(3)]
        for a, t in zip(self.sliceAxes, ('XY', 'XZ', 'YZ')):
            a.set_title(t, fontsize=8)
            a.set_axis_off()
        self.sliceFig.subplots_adjust(left=0.02, right=0.98, top=0.85, bottom=0.02, wspace=0.08)
        self.sliceCanvas = FigureCanvasTkAgg(self.sliceFig, master=box)
        self.sliceCanvas.get_tk_widget().pack(fill=tk.X)
        self.sliceText = tk.StringVar(self.root, 'choose "click: show slices" and click a point')
        ttk.Label(box, textvariable=self.sliceText, wraplength=330, font=('TkDefaultFont', 8)
                  ).pack(fill=tk.X)

    # ------------------------------------------------------------------ map
    def start(self):
        self.computeMap()
        if self.ownRoot:
            self.root.mainloop()

    def computeMap(self):
        """Compute (or load the cached) map in a thread; draw when it is there."""
        if self._busy is not None:
            return
        method = self.method.get()
        self.status.set('computing the %s map of %d subtomograms (once; kept in the run\'s '
                        'extra/map folder)...' % (method, self.session.n))
        result = {}

        def work():
            try:
                result['map'] = self.session.computeMap(method)
            except Exception as e:       # shown in the window, never a traceback in the GUI
                result['error'] = str(e)
        self._busy = threading.Thread(target=work, daemon=True)
        self._busy.start()
        self._poll(result)

    def _poll(self, result):
        if self._busy.is_alive():
            self.root.after(200, self._poll, result)
            return
        self._busy = None
        if 'error' in result:
            self.status.set('map failed: %s' % result['error'])
            return
        m, cached = result['map']
        self.session.clear()
        self.redraw()
        self.status.set('%s (%s). %s' % (m.describe(), 'cached' if cached else
                                         'computed in %.0f s' % m.seconds,
                                         self.session.describeSelection()))

    def redraw(self):
        s = self.session
        if s.map is None:
            return
        if self.selector is not None:
            self.selector.set_active(False)
            self.selector = None
        self.fig.clear()                 # axes and colour bar anew: simplest and never stale
        self.ax = self.fig.add_subplot(1, 1, 1)
        d = s.map.drawn
        xy = s.xy[d]
        values, kind, title = s.colourValues(self.colour.get())
        size = max(3, min(30, 6000.0 / max(1, len(d))))
        if kind == 'continuous':
            sc = self.ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(values, float)[d], s=size,
                                 cmap='viridis', linewidths=0)
            self.fig.colorbar(sc, ax=self.ax, fraction=0.04, pad=0.02).set_label(title)
        else:
            from deepcluster.core.analysis.plots import _colours, sorted_labels
            vals = np.asarray(values, dtype=object)[d]
            names = sorted_labels(vals.astype(str))
            cols = _colours(len(names), 'truth' if title == 'true label' else 'cluster')
            for name, c in zip(names, cols):
                m = vals.astype(str) == name
                self.ax.scatter(xy[m, 0], xy[m, 1], s=size, color=c, linewidths=0,
                                label=('class %s' % name) if title == 'class' else name)
            if len(names) <= 40:        # beside the map, never over its points
                self.ax.legend(title=title, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0),
                               markerscale=1.5, ncol=1 if len(names) <= 20 else 2)
        poly = getattr(self, 'lastPolygon', None)
        if poly is not None and s.mask.any():
            closed = np.vstack([poly, poly[:1]])
            self.ax.plot(closed[:, 0], closed[:, 1], color='black', lw=1, ls='--', alpha=0.7)
        sm = s.mask[d]
        if sm.any():
            self.ax.scatter(xy[sm, 0], xy[sm, 1], s=size * 2.2, facecolors='none',
                            edgecolors='black', linewidths=0.8, label='_selected')
        name = {'tsne': 't-SNE', 'umap': 'UMAP', 'pca': 'PCA'}[s.map.method]
        self.ax.set_title('%s - %s' % (s.map.describe(), s.describeSelection()), fontsize=9)
        self.ax.set_xlabel('%s 1' % name)
        self.ax.set_ylabel('%s 2' % name)
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        self.fig.subplots_adjust(left=0.04, right=0.84 if kind == 'categorical' else 0.95,
                                 top=0.95, bottom=0.05)
        self.canvas.draw_idle()
        self._setTool()

    # ------------------------------------------------------------------ tools
    def _setTool(self):
        from matplotlib.widgets import LassoSelector, RectangleSelector
        if self.selector is not None:
            self.selector.set_active(False)
            self.selector = None
        if self.tool.get() == 'lasso':
            self.selector = LassoSelector(self.ax, onselect=self.onLasso,
                                          props=dict(color='black', lw=1))
        elif self.tool.get() == 'box':
            self.selector = RectangleSelector(self.ax, self.onBox, useblit=False, button=[1],
                                              interactive=False,
                                              props=dict(facecolor='none', edgecolor='black'))

    def onLasso(self, vertices):
        if len(vertices) < 3:
            return
        self.session.selectPolygon(vertices, add=self.add.get())
        self.lastPolygon = np.asarray(vertices)
        self._selectionChanged()

    def onBox(self, press, release):
        (x0, y0), (x1, y1) = (press.xdata, press.ydata), (release.xdata, release.ydata)
        self.session.selectBox((x0, y0), (x1, y1), add=self.add.get())
        self.lastPolygon = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        self._selectionChanged()

    def selectClasses(self):
        ids = [self.session.classIds()[i] for i in self.classList.curselection()]
        if ids:
            self.session.selectClasses(ids, add=self.add.get())
            self.lastPolygon = None
            self._selectionChanged()

    def clear(self):
        self.session.clear()
        self.lastPolygon = None
        self._selectionChanged()

    def _selectionChanged(self):
        self.status.set(self.session.describeSelection())
        self.redraw()

    def _onClick(self, event):
        if self.tool.get() != 'pick' or event.inaxes is not self.ax or self.session.map is None:
            return
        self.showSlices(self.session.pick((event.xdata, event.ydata)))

    def showSlices(self, row):
        s = self.session
        try:
            slices = s.centralSlices(row)
        except Exception as e:
            self.sliceText.set('cannot read %s: %s' % (s.files[row], e))
            return
        for a, img, t in zip(self.sliceAxes, slices, ('XY', 'XZ', 'YZ')):
            a.clear()
            lo, hi = np.percentile(img, [1, 99])
            a.imshow(img, cmap='gray', vmin=lo, vmax=hi if hi > lo else lo + 1)
            a.set_title(t, fontsize=8)
            a.set_axis_off()
        self.sliceCanvas.draw_idle()
        truth = '' if s.truth is None else ', true label %s' % s.truth[row]
        self.sliceText.set('item %d, class %d%s\n%s' % (s.ids[row], s.classes[row], truth,
                                                       s.files[row]))

    def register(self, mode):
        if not self.session.mask.any():
            messagebox.showinfo('Nothing selected', 'Select items first (lasso, box or classes).',
                                parent=self.root)
            return None
        try:
            prot = self.session.register(mode)
        except Exception as e:
            messagebox.showerror('Could not create the output', str(e), parent=self.root)
            return None
        self.status.set('launched "%s" (run %s): its output appears in the project when it '
                        'finishes.' % (prot.getObjLabel(), prot.getObjId()))
        return prot
