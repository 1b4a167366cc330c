"""Atomic file writes: a file is either the old one or the complete new one, never half.

Every file the command line writes goes through ``atomic_write_text`` or
``atomic_write_bytes``: the content is written to a temporary file in the same folder
(so that the final rename stays on one file system), flushed and synced, then moved over
the target with ``os.replace``, which POSIX and Windows make atomic. An error or an
interrupt during the write removes the temporary file and leaves any old file intact.
"""
import math
import os
import stat
import tempfile

__all__ = ["atomic_write_text", "atomic_write_bytes", "finite_json"]


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The target file; its folder must exist. An existing file is replaced, keeping
        its permission bits; a symbolic link keeps pointing at the (new) file; a device
        or a pipe such as ``/dev/null`` is written into directly.
    data : bytes

    Returns
    -------
    bool
        True if ``path`` existed before (so that the caller can say it was overwritten).
    """
    path = os.path.realpath(os.fspath(path))  # through a symbolic link: replace its target, keep the link
    existed = os.path.exists(path)
    if existed and not stat.S_ISREG(os.stat(path).st_mode):
        # A device or a pipe (/dev/null, /dev/stdout): nothing to keep, and renaming over it
        # would replace the device node itself, so write into it directly.
        with open(path, "wb") as fh:
            fh.write(data)
        return True
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mode = os.stat(path).st_mode & 0o7777 if existed else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:  # an error or an interrupt: remove the temporary file, keep the old one
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return existed


def atomic_write_text(path, text, encoding="utf-8"):
    """Write ``text`` (str) to ``path`` atomically; see ``atomic_write_bytes``.

    Returns True if ``path`` existed before.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finite_json(obj):
    """``obj`` with non-finite floats replaced by strings ('nan', 'inf'): strict JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
