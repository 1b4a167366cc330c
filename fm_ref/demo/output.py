"""The demo's output files: checked writable before any training, written atomically.

``check_outputs`` runs before the minutes of training, so that a bad ``--out`` fails at
once; ``write_atomic`` writes a temporary file in the same folder and renames it over
the target (``os.replace``), so that an interrupted write leaves the old file (or none),
never a truncated one.
"""
import os
import tempfile

__all__ = ["check_outputs", "write_atomic"]


def check_outputs(out, names):
    """Check that the files ``names`` can be written in the directory ``out``.

    Parameters
    ----------
    out : str, an existing directory
    names : list of str, file names

    Returns
    -------
    dict name -> bool, whether the file exists already (and will be replaced)

    Raises ``ValueError`` ('out: ...') when ``out`` is not a directory, a target exists
    and is not a regular file, or a file cannot be created in ``out`` (tried, not
    guessed from permission bits, which say nothing for root or on read-only mounts).
    """
    if not os.path.isdir(out):
        raise ValueError(f"out: expected an existing directory, got {out!r}")
    exists = {}
    for name in names:
        path = os.path.join(out, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ValueError(f"out: {path!r} exists and is not a regular file; the demo writes {name} there")
        exists[name] = os.path.exists(path)
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".fm-ref-probe-")
    except OSError as exc:
        raise ValueError(f"out: cannot create files in {out!r} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return exists


def write_atomic(path, data):
    """Write the bytes ``data`` to ``path`` atomically (``fm_ref._io.atomic_write_bytes``:
    a temporary file in the same folder, synced, then renamed over ``path``; an existing
    file keeps its permission bits; an error or an interrupt leaves the old file).

    Returns True when an existing file was replaced.
    """
    from .._io import atomic_write_bytes

    return atomic_write_bytes(path, data)
