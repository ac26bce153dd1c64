"""The output policy every command follows (and so every protocol step, which runs
the CLI). Data is sacred:

* ``claim_output``: an existing output that is not a previous output of the same
  command is refused; so is an output equal to, inside or containing an input,
  the current folder, or '' (``refuse_overlap``, ``check_out_path``).
* ``atomic_path`` / ``atomic_paths``: everything is written under a hidden temp
  name beside its final place and renamed there on success; a folder is built
  whole and renamed as a unit; files that belong together are committed together
  under a lock on their folder, with a journal of the renames, so an interrupted
  commit is rolled back (in the process on an error, by the next run after a
  kill) and a reader refuses a pair whose manifest hash does not match.
* Nothing is deleted that a run of ours did not create: only our own temporaries
  (``.<name>.dc-tmp.<pid>.<token>``; backups ``dc-old``; journals ``dc-commit``)
  whose process is gone, and the previous output of the same command once its
  replacement is in place.
* ``check_finite``: a non-finite result is an error, not an output.
"""
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import time

import numpy as np

from deepcluster.core import DeepClusterError

try:
    import fcntl
except ImportError:     # not POSIX: no locking (commits are still journalled)
    fcntl = None

STAMP = '.deepcluster-output'       # inside a folder output: {"command": ...}
_NAME = re.compile(r'^\.(?P<base>.*)\.dc-(?P<kind>tmp|old|commit)\.(?P<pid>\d+)\.(?P<tok>[0-9a-f]+)'
                   r'(?P<ext>\.[^.]*)?$')


# ------------------------------------------------------------- critical parts
_state = {'depth': 0, 'pending': None}


@contextlib.contextmanager
def critical():
    """Renames and their clean-up run to the end: a termination request (SIGTERM,
    see ``cli``) that arrives meanwhile is acted on when the section is left."""
    _state['depth'] += 1
    try:
        yield
    finally:
        _state['depth'] -= 1
        if _state['depth'] == 0 and _state['pending'] is not None:
            code, _state['pending'] = _state['pending'], None
            raise SystemExit(code)


def request_exit(code):
    """Exit now (SystemExit), or at the end of the critical section under way."""
    if _state['depth']:
        _state['pending'] = code
    else:
        raise SystemExit(code)


# --------------------------------------------------------------------- names
def _hidden(path, kind, token=None, suffix=None):
    """``.<name>.dc-<kind>.<pid>.<token><ext>``: ours by its pattern, its process by
    the pid; it keeps the extension (savefig, np.save go by it)."""
    d, base = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(base)[1] if suffix is None else suffix
    return os.path.join(d, '.%s.dc-%s.%d.%s%s' % (base[:120], kind, os.getpid(),
                                                  token or secrets.token_hex(4), ext[:16]))


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: someone else's live process
        return True
    return True


def user_error(e, path=None):
    """An OSError as a one-line DeepClusterError naming the path."""
    where = e.filename if getattr(e, 'filename', None) else path
    why = e.strerror or str(e)
    hint = {errno.ENOSPC: '; free some space or write elsewhere',
            errno.EDQUOT: '; free some space or write elsewhere',
            errno.EACCES: '; choose a folder you can write to',
            errno.EROFS: '; choose a folder you can write to',
            errno.EPERM: '; choose a folder you can write to'}.get(e.errno, '')
    return DeepClusterError('%s: %s%s' % (where, why, hint))


# ------------------------------------------------------------------ the checks
def check_out_path(path, flag='--out'):
    """The absolute output path, or a one-line error for '', the root, the current
    folder or one of its parents (which replacing would take away)."""
    if path is None or not os.fspath(path).strip():
        raise DeepClusterError('%s is empty: give a file or folder name' % flag)
    p = os.path.abspath(os.fspath(path))
    cwd = os.path.realpath(os.getcwd())
    rp = os.path.realpath(p)
    if rp == os.path.dirname(rp) or cwd == rp or cwd.startswith(rp.rstrip(os.sep) + os.sep):
        raise DeepClusterError('%s %s: is the current folder or holds it; give a new name, '
                               'e.g. %s out' % (flag, path, flag))
    return p


def _inside(a, b):
    """Whether real path ``a`` is ``b`` or lies inside folder ``b``."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def refuse_overlap(outputs, inputs):
    """``outputs``, ``inputs``: [(flag, path)]. An output equal to, inside or containing
    an input (or another output) is refused with one line."""
    dirs = {}

    def real(p):            # realpath of the folder once, not of every file in it
        d, b = os.path.split(os.path.abspath(os.fspath(p)))
        if d not in dirs:
            dirs[d] = os.path.realpath(d)
        r = os.path.join(dirs[d], b)
        return os.path.realpath(r) if os.path.islink(r) else r
    outs = [(f, o, real(o)) for f, o in outputs if o]
    for i, (f, o, ro) in enumerate(outs):
        for f2, o2, ro2 in outs[i + 1:]:
            if _inside(ro, ro2) or _inside(ro2, ro):
                raise DeepClusterError('%s %s and %s %s overlap; give them separate places'
                                       % (f, o, f2, o2))
    for fi, p in inputs:
        if not p:
            continue
        rp = real(p)
        for f, o, ro in outs:
            if ro == rp:
                raise DeepClusterError('%s %s is the input %s; choose another output name '
                                       '(inputs are never overwritten)' % (f, o, p))
            if _inside(rp, ro):
                raise DeepClusterError('%s %s holds the input %s; write the output elsewhere '
                                       '(inputs are never overwritten)' % (f, o, p))
            if _inside(ro, rp) and os.path.isdir(rp):
                raise DeepClusterError('%s %s is inside the input folder %s; write the output '
                                       'elsewhere (inputs are never modified)' % (f, o, p))


def read_stamp(folder):
    try:
        with open(os.path.join(folder, STAMP)) as f:
            return json.load(f).get('command')
    except (OSError, ValueError, AttributeError):
        return None


def mark_folder(folder, command):
    """Write the stamp that says a folder is an output of ``command``."""
    from deepcluster import __version__
    with open(os.path.join(folder, STAMP), 'w') as f:
        json.dump({'command': command, 'version': __version__}, f)


def is_our_folder(path, command, legacy=None):
    """A folder stamped by ``command`` (or recognised by ``legacy(path)``: outputs of
    versions before the stamp), or an empty one."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    if read_stamp(path) == command:
        return True
    try:
        if not os.listdir(path):
            return True
    except OSError:
        return False
    return bool(legacy and legacy(path))


def claim_output(path, command, flag='--out', ours=None, folder=False):
    """Check that ``path`` may be written by ``command``: it does not exist, or is a
    previous output of the same command (``ours(path)`` for a file; the stamp for a
    folder). Cleans our stale temporaries beside it. Returns the absolute path."""
    p = check_out_path(path, flag)
    parent = os.path.dirname(p)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise DeepClusterError('%s %s: %s is not a folder' % (flag, path, parent))
    clean_stale(parent)
    _clean_legacy_temps(p)
    if not os.path.lexists(p):
        return p
    if folder:
        if os.path.isdir(p) and not os.path.islink(p) and is_our_folder(p, command, ours):
            return p
        what = 'a file' if not os.path.isdir(p) else 'a folder that is not an output of ' \
            '`deepcluster %s`' % command
    else:
        if os.path.isdir(p):
            raise DeepClusterError('%s %s: is a folder; give a file name' % (flag, path))
        if ours is not None and os.path.isfile(p) and ours(p):
            return p
        what = 'a file that is not an output of `deepcluster %s`' % command
    raise DeepClusterError('%s %s: exists and is %s; choose a new name (or remove it yourself)'
                           % (flag, path, what))


def _clean_legacy_temps(path, min_age=600):
    """Temp folders of versions before this policy (``tempfile.mkdtemp(prefix='.<name>.')``
    holding at most ``<name>``), which killed runs left behind: removed when older than
    ``min_age`` seconds (no pid to tell a live one)."""
    parent, base = os.path.split(path)
    pat = re.compile(r'^\.%s\.[a-z0-9_]{8}$' % re.escape(base))
    try:
        names = [n for n in os.listdir(parent) if pat.match(n)]
    except OSError:
        return
    for n in names:
        p = os.path.join(parent, n)
        try:
            if os.path.isdir(p) and not os.path.islink(p) and set(os.listdir(p)) <= {base} \
                    and time.time() - os.lstat(p).st_mtime > min_age:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def check_finite(a, what):
    a = np.asarray(a)
    if a.dtype.kind in 'fc' and not np.isfinite(a).all():
        raise DeepClusterError('%s: the result holds NaN or infinite values; nothing was written'
                               % what)
    return a


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ locking
@contextlib.contextmanager
def folder_lock(folder):
    """Exclusive lock on a folder (flock on its descriptor: no lock file to leave)."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ------------------------------------------------------------------ stale files
def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def clean_stale(folder):
    """Finish or roll back the interrupted commits of dead runs of ours in ``folder``,
    then remove their temporaries. Only names of our pattern with a dead pid."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        return
    try:
        names = [n for n in os.listdir(folder) if n.startswith('.') and '.dc-' in n]
    except OSError:
        return
    stale = []
    for n in names:
        m = _NAME.match(n)
        if m and not _alive(int(m.group('pid'))):
            stale.append((m.group('kind'), os.path.join(folder, n)))
    if not stale:
        return
    with critical(), folder_lock(folder):
        for kind, p in stale:
            if kind == 'commit' and p.endswith('.json'):
                _recover(p)
        for kind, p in stale:
            if kind != 'commit':
                _remove(p)


def _ino(path):
    try:
        st = os.lstat(path)
        return [st.st_dev, st.st_ino]
    except OSError:
        return None


def _recover(journal):
    """Roll back a journalled commit that did not finish (or finish its clean-up)."""
    try:
        with open(journal) as f:
            entries = json.load(f)['entries']
    except (OSError, ValueError, KeyError, TypeError):
        _remove(journal)
        return
    _rollback(entries)
    _remove(journal)


def _rollback(entries):
    done = [_ino(e['final']) == e['new'] for e in entries]
    if all(done):                        # committed; only the clean-up was cut short
        for e in entries:
            if e.get('backup'):
                _remove(e['backup'])
        return
    for e, ok in zip(entries, done):
        b = e.get('backup')
        if ok:                           # the new half: put the old one back
            if b and os.path.lexists(b):
                if e['kind'] == 'moved' and os.path.isdir(e['final']):
                    tmp = _hidden(e['final'], 'tmp')
                    os.rename(e['final'], tmp)
                    os.rename(b, e['final'])
                    _remove(tmp)
                else:
                    os.replace(b, e['final'])
            else:
                _remove(e['final'])
        elif b and os.path.lexists(b):
            if e['kind'] != 'moved':
                _remove(b)              # a hard link of what is still in place
            elif not os.path.lexists(e['final']):
                os.rename(b, e['final'])    # (a moved-aside original is never deleted)
        _remove(e['tmp'])


# ------------------------------------------------------------------ committing
_RENAME_EXCHANGE = 2


def _exchange(a, b):
    """Swap two paths atomically (Linux renameat2); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(e, os.strerror(e), a)


def commit(pairs, ours=None):
    """Rename each temp onto its final path, all together: under a lock on the
    folder, with a journal so an interruption is rolled back (here on an error,
    by the next run's ``clean_stale`` after a kill). ``pairs``: [(tmp, final)];
    ``ours(final)``: re-checked under the lock for an existing final (another
    process may have put something there meanwhile)."""
    pairs = [(os.path.abspath(t), os.path.abspath(f)) for t, f in pairs]
    folders = sorted({os.path.dirname(f) for _, f in pairs})
    with critical(), contextlib.ExitStack() as stack:
        for d in folders:
            stack.enter_context(folder_lock(d))
        for tmp, final in pairs:
            if ours is not None and os.path.lexists(final) and not ours(final):
                raise DeepClusterError('%s: appeared meanwhile and is not ours; not replaced' % final)
        if len(pairs) == 1 and os.path.isdir(pairs[0][0]) and os.path.isdir(pairs[0][1]) \
                and not os.path.islink(pairs[0][1]):
            tmp, final = pairs[0]
            if _exchange(tmp, final):            # atomic swap; the old folder is at tmp now
                _remove(tmp)
                return
        if len(pairs) == 1 and not os.path.isdir(pairs[0][1]):
            os.replace(*pairs[0])               # one file: a rename is atomic
            return
        token = secrets.token_hex(4)
        entries = []
        journal = _hidden(pairs[0][1], 'commit', token, '.json')
        part = _hidden(journal, 'tmp')
        try:
            for tmp, final in pairs:
                e = {'tmp': tmp, 'final': final, 'new': _ino(tmp), 'backup': None, 'kind': None}
                if os.path.lexists(final):
                    e['backup'] = _hidden(final, 'old', token)
                    e['kind'] = 'moved'
                    if not os.path.isdir(final):
                        try:
                            os.link(final, e['backup'])
                            e['kind'] = 'link'
                        except OSError:
                            pass
                entries.append(e)
            with open(part, 'w') as f:
                json.dump({'entries': entries}, f)
            os.replace(part, journal)
            for e in entries:
                if e['kind'] == 'moved':
                    os.rename(e['final'], e['backup'])
                os.replace(e['tmp'], e['final'])
        except BaseException:
            _rollback(entries)
            _remove(part)
            _remove(journal)
            raise
        for e in entries:
            if e['backup']:
                _remove(e['backup'])
        _remove(journal)


@contextlib.contextmanager
def atomic_paths(*paths, ours=None):
    """Yield temp paths beside ``paths`` (the caller writes files or makes folders
    there); on success they are committed together (``commit``), on any error
    removed. OSErrors while writing become one-line errors naming the output."""
    finals = [os.path.abspath(os.fspath(p)) for p in paths]
    for f in finals:
        try:
            os.makedirs(os.path.dirname(f), exist_ok=True)
        except OSError as e:
            raise user_error(e, f)
        clean_stale(os.path.dirname(f))
    tmps = [_hidden(f, 'tmp') for f in finals]
    try:
        try:
            yield tmps
            commit(list(zip(tmps, finals)), ours)
        except OSError as e:
            raise user_error(e, finals[0])
    finally:
        with critical():
            for t in tmps:
                _remove(t)


@contextlib.contextmanager
def atomic_path(path, ours=None):
    """Yield a temp path beside ``path``; move it onto ``path`` only on success.
    Works for files and folders (the caller creates what it likes at the temp path;
    a folder replaces a previous folder as a unit)."""
    with atomic_paths(path, ours=ours) as (tmp,):
        yield tmp


@contextlib.contextmanager
def output_folder(path, command):
    """Build a folder output of ``command`` in a temp folder (stamped as ours) and
    rename it onto ``path`` as a unit; ``path`` must have been claimed."""
    with atomic_path(path) as tmp:
        os.makedirs(tmp)
        mark_folder(tmp, command)
        yield tmp


@contextlib.contextmanager
def work_folder(path, command, flag='--work-dir', legacy=None):
    """A folder kept across runs (training checkpoints): created and stamped if new,
    reused if ours, refused otherwise; removed again if this run created it and the
    run fails leaving nothing worth keeping (no checkpoint)."""
    p = claim_output(path, command, flag, ours=legacy, folder=True)
    created = not os.path.isdir(p)
    try:
        os.makedirs(p, exist_ok=True)
        if read_stamp(p) != command:
            mark_folder(p, command)
    except OSError as e:
        raise user_error(e, p)
    try:
        yield p
    except BaseException:
        if created and not any(n.startswith('checkpoint') for n in os.listdir(p)):
            shutil.rmtree(p, ignore_errors=True)
        raise
