"""Shared plumbing of the deepcluster protocols: running the CLI, moving
subtomograms between Scipion sets and files, GPU and model parameters."""
import csv
import os
import re

import numpy as np
import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.protocols import EMProtocol
from tomo.protocols import ProtTomoBase

from .. import Plugin
from ..constants import FEATURE_ATTR, LABEL_ATTR, SHIPPED_MODELS

MRC_EXTS = ('.mrc', '.map', '.rec', '.mrcs', '.st', '.ali')
MODEL_SHIPPED, MODEL_TRAINED = 0, 1
VAL_ACC_ATTR = '_dcValAcc'      # validation accuracy, stored on DeepClusterModel outputs


def near_chance(val_acc, n_classes):
    """A validation accuracy below min(2 x chance, halfway from chance to 1) is
    'near chance': e.g. 0.14 for 7 classes (chance 0.14, threshold 0.29)."""
    if val_acc is None or not n_classes or n_classes < 2:
        return False
    chance = 1.0 / n_classes
    return val_acc < min(2 * chance, (1 + chance) / 2)


class ProtDeepClusterBase(EMProtocol, ProtTomoBase):
    """Base of all deepcluster protocols (not shown in the GUI)."""
    _label = None

    # ------------------------------------------------------------- form pieces
    @staticmethod
    def _defineGpuParams(form):
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label='Use GPU for execution',
                       help='Uses a CUDA GPU when torch sees one; otherwise the job '
                            'runs on the CPU (with a warning in the log).')
        form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                       label='Choose GPU IDs', help='GPU ids, e.g. "0" or "0 1".')

    @staticmethod
    def _defineSubtomogramsParam(form, label='Subtomograms',
                                 help='Any voxel size and box; resampled to the model on the fly '
                                      '(cropped in Fourier space). Finer is better: extract at the '
                                      'finest binning you can afford, with a box of ~400 Å (on '
                                      'simulated tilt series, 6.8 Å/voxel scored V-measure 0.99 '
                                      'where 10 Å gave 0.91 and 20 Å 0.65; README).'):
        form.addParam('inputSubtomograms', params.PointerParam, pointerClass='SetOfSubTomograms',
                      important=True, label=label, help=help)

    @staticmethod
    def _defineStructureParams(form, condition=None):
        """The classes to simulate: maps, structure files, procedural shapes and
        membrane-bound variants (simulate, and train from structures)."""
        form.addParam('inputVolumes', params.PointerParam, pointerClass='SetOfVolumes',
                      allowsNull=True, condition=condition, label='Density maps (optional)',
                      help='Each volume is one class (protein density positive). Any sampling '
                           'rate: maps are resampled to the target voxel size.')
        form.addParam('structuresPath', params.PathParam, default='', condition=condition,
                      label='Structure files or folder (optional)',
                      help='A folder, or files separated by spaces, of .mrc maps and/or '
                           '.pdb/.cif atomic models; the file name is the class name.')
        form.addParam('procedural', params.IntParam, default=0, validators=[params.GE(0)],
                      condition=condition, label='Procedural classes',
                      help='Number of seeded pseudo-molecule classes (5-40 nm, varied shape '
                           'and symmetry) to add: no structures needed. Default 0: none.')
        form.addParam('membraneBound', params.StringParam, default='', condition=condition,
                      label='Membrane-bound variants of',
                      help='Class names (space separated) that also get a "<name>_mb" class: '
                           'the same particle sitting on a membrane. Default empty: none.')

    def _hasStructures(self):
        return self.inputVolumes.hasValue() or self.structuresPath.get() or self.procedural.get() > 0

    @staticmethod
    def _defineModelParam(form):
        # An explicit choice: Scipion fills a pointer by itself when the project holds
        # exactly one candidate, so "empty pointer = shipped model" silently picked
        # any train run (even a chance-level one).
        form.addParam('modelSource', params.EnumParam, default=MODEL_SHIPPED,
                      choices=['shipped model', 'trained model'],
                      display=params.EnumParam.DISPLAY_HLIST, label='Model',
                      help='shipped model (default): a pretrained model that comes with the plugin '
                           '(trained on synthetic data from 13 SHREC structures, membrane-bound '
                           'variants and procedural shapes); most users need nothing else. '
                           'trained model: one made by "deepcluster - train" in this project.')
        form.addParam('inputModel', params.PointerParam, pointerClass='DeepClusterModel',
                      allowsNull=True, condition='modelSource==%d' % MODEL_TRAINED,
                      label='Trained model',
                      help='A model from "deepcluster - train". Its summary shows its validation '
                           'accuracy; a model near chance level (e.g. a short test run) is '
                           'flagged with a warning before the run starts.')
        form.addParam('shippedModel', params.EnumParam, choices=SHIPPED_MODELS, default=0,
                      display=params.EnumParam.DISPLAY_HLIST, label='Shipped model',
                      condition='modelSource==%d' % MODEL_SHIPPED,
                      help='default: fast (thousands of '
                           'subtomograms per second on a laptop CPU). accurate: twice the '
                           'channels in the first four stages, 2.5x slower, and better on '
                           'nearly every benchmark of the README (mean V-measure over 11 '
                           'simulated test sets 0.80 vs 0.77; e.g. 0.89 vs 0.84 for '
                           'membrane-bound vs cytosolic ribosomes).')

    # ------------------------------------------------------------- running
    def _deviceArgs(self):
        return ['--device', 'cuda' if self.usesGpu() else 'cpu']

    def _cliEnv(self):
        env = pwutils.Environ(os.environ)
        if self.usesGpu():
            env['CUDA_VISIBLE_DEVICES'] = ','.join(str(g) for g in self.getGpuList())
        env.setdefault('PYTHONUNBUFFERED', '1')
        return env

    def runDeepCluster(self, command, args):
        """Run ``python -m deepcluster COMMAND ARGS`` through runJob (logs, queues)."""
        python, module = Plugin.getProgram()
        quoted = ' '.join(_quote(str(a)) for a in args)
        self.runJob(python, '%s %s %s' % (module, command, quoted),
                    env=self._cliEnv(), numberOfMpi=1)

    def _usesTrainedModel(self):
        return (self.hasAttribute('modelSource') and self.modelSource.get() == MODEL_TRAINED
                and self.inputModel.hasValue())

    def _modelArgs(self):
        if self._usesTrainedModel():
            return ['--model', self.inputModel.get().getFileName()]
        return ['--model', self._shippedModelName()]

    @staticmethod
    def modelQuality(model):
        """(validation accuracy or None, number of classes) of a DeepClusterModel:
        the accuracy stored on it by "train", else the best one of the training log
        beside its file (runs made before it was stored)."""
        n = len(model.getClassNames())
        value = getattr(model, VAL_ACC_ATTR, None)
        if value is not None and value.get() is not None:
            return float(value.get()), n
        fn = model.getFileName() or ''
        log = os.path.join(os.path.dirname(fn), 'training', 'train_log.csv')
        accs = []
        if os.path.exists(log):
            with open(log, newline='') as f:
                for row in csv.DictReader(f):
                    try:
                        accs.append(float(row.get('val_acc') or 'nan'))
                    except ValueError:
                        pass
        accs = [a for a in accs if a == a]
        return (max(accs) if accs else None), n

    def _modelErrors(self):
        if self.hasAttribute('modelSource') and self.modelSource.get() == MODEL_TRAINED \
                and not self.inputModel.hasValue():
            return ['Model: choose a trained model, or set Model to "shipped model".']
        return []

    def _modelWarnings(self):
        if not self._usesTrainedModel():
            return []
        acc, n = self.modelQuality(self.inputModel.get())
        if near_chance(acc, n):
            return ['The trained model %s is near chance level: validation accuracy %.2f for '
                    '%d classes (chance %.2f). Its features will hardly separate shapes; use the '
                    'shipped model or train longer.' % (self.inputModel.get().getObjLabel() or
                                                        self.inputModel.get(), acc, n, 1.0 / n)]
        return []

    def _modelSummary(self):
        """One line naming the model, its validation accuracy, and a warning near chance."""
        if not self._usesTrainedModel():
            return ['Model: the shipped %s model.' % self._shippedModelName()]
        acc, n = self.modelQuality(self.inputModel.get())
        line = 'Model: trained model %s' % self.inputModel.get().getFileName()
        if acc is not None:
            line += ', validation accuracy %.2f for %d classes (chance %.2f)' % (acc, n, 1.0 / max(1, n))
            if near_chance(acc, n):
                line += ' - WARNING: near chance level, the classes mean little'
        return [line + '.']

    def _shippedModelName(self):
        return SHIPPED_MODELS[self.shippedModel.get()] if self.hasAttribute('shippedModel') else 'default'

    # ------------------------------------------------------------- data in/out
    def writeSubtomogramList(self, subtomos, listFn):
        """Write the volume files of ``subtomos`` (in set order) to a .txt list.

        Items inside multi-volume stacks are copied out to tmp/ as single MRCs;
        input files are never modified. Returns the list of item ids in order."""
        ids, paths = [], []
        for item in subtomos.iterItems(orderBy='id'):
            index, fn = item.getLocation()
            fn = fn.split(':')[0]
            if not fn.lower().endswith(MRC_EXTS):
                raise ValueError('%s: only MRC subtomograms are supported; convert this '
                                 'set to .mrc first' % fn)
            if index and index > 1 or fn.lower().endswith('.mrcs'):
                fn = self._extractFromStack(fn, index or 1, item.getObjId())
            ids.append(item.getObjId())
            paths.append(os.path.abspath(fn))
        with open(listFn, 'w') as f:
            f.write('\n'.join(paths) + '\n')
        return ids, paths

    def _extractFromStack(self, fn, index, objId):
        import mrcfile
        with mrcfile.mmap(fn, mode='r', permissive=True) as mrc:
            data = np.asarray(mrc.data)
            vol = data[index - 1] if data.ndim == 4 else data
            vs = float(mrc.voxel_size.x)
        out = self._getTmpPath('subtomo_%06d.mrc' % objId)
        with mrcfile.new(out, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(vol, dtype=np.float32))
            m.voxel_size = vs
        return out

    @staticmethod
    def writeTruthCsv(subtomos, paths, csvFn):
        """labels.csv (file,label) from the items' ground-truth label, if all have one."""
        # (iterItems reuses one item object: read the values inside the loop)
        labels = [getattr(item, LABEL_ATTR).get() if hasattr(item, LABEL_ATTR) else None
                  for item in subtomos.iterItems(orderBy='id')]
        if not labels or not all(labels):
            return False
        with open(csvFn, 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['file', 'label'])
            for p, lab in zip(paths, labels):
                w.writerow([p, lab])
        return True

    @staticmethod
    def readFeatures(subtomos):
        """N x D float32 features stored on the items by the embed protocol."""
        return np.vstack([ProtDeepClusterBase.itemFeature(item) for item in subtomos.iterItems(orderBy='id')])

    @staticmethod
    def itemFeature(item):
        """The feature the embed protocol stored on one item (float32 vector)."""
        value = getattr(item, FEATURE_ATTR, None)
        if value is None or not value.get():
            raise ValueError('subtomogram %s has no deepcluster features: run '
                             '"deepcluster - embed" on this set first' % item.getObjId())
        return np.array(value.get().split(','), dtype=np.float32)

    @staticmethod
    def hasFeatures(subtomos):
        first = subtomos.getFirstItem()
        return first is not None and getattr(first, FEATURE_ATTR, None) is not None

    @staticmethod
    def hasTruth(subtomos):
        first = subtomos.getFirstItem()
        return first is not None and getattr(first, LABEL_ATTR, None) is not None

    def exportStructures(self):
        """Write the input SetOfVolumes (if any) as .mrc files named by class, with
        the set's sampling rate in the header (headers are often wrong)."""
        import mrcfile
        folder = self._getTmpPath('structures')
        os.makedirs(folder, exist_ok=True)
        if not self.inputVolumes.hasValue():
            return
        used = set()
        for vol in self.inputVolumes.get().iterItems(orderBy='id'):
            name = _className(vol, used)
            index, fn = vol.getLocation()
            with mrcfile.open(fn.split(':')[0], permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32)
            if data.ndim == 4:
                data = data[(index or 1) - 1]
            with mrcfile.new(os.path.join(folder, name + '.mrc')) as m:
                m.set_data(np.ascontiguousarray(data))
                m.voxel_size = vol.getSamplingRate()

    def structureArgs(self):
        """CLI flags for the classes (simulate, train from structures): exported
        volumes and/or the user's paths, procedural shapes, membrane-bound variants."""
        paths = [self._getTmpPath('structures')] if self.inputVolumes.hasValue() else []
        paths += (self.structuresPath.get() or '').split()
        args = ['--structures'] + paths if paths else []
        if self.procedural.get() > 0:
            args += ['--procedural', self.procedural.get()]
        if self.membraneBound.get():
            args += ['--membrane-bound'] + self.membraneBound.get().split()
        return args

    def copySubtomograms(self, inputSet, suffix=''):
        out = self._createSetOfSubTomograms(suffix)
        out.copyInfo(inputSet)
        return out


def _className(vol, used):
    """A file-safe, unique class name from the volume's label or file name."""
    base = vol.getObjLabel() or os.path.splitext(os.path.basename(vol.getFileName()))[0]
    base = re.sub(r'[^A-Za-z0-9_.-]+', '_', base).strip('_') or 'class'
    name, i = base, 2
    while name in used:
        name, i = '%s_%d' % (base, i), i + 1
    used.add(name)
    return name


def featureString(vec):
    return ','.join('%.6g' % v for v in vec)


def _quote(s):
    return "'%s'" % s.replace("'", "'\\''") if any(c in s for c in " '\"$;&|<>()") else s
