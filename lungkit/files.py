"""Files lungkit writes and recognises: atomic writes, ownership markers, content hashes.

Every file lungkit writes goes through `atomic_path` (or the helpers built on it): the data go
to a temporary file beside the target, which replaces the target only once it is complete,
so a kill or a full disk leaves the previous version intact. A folder that lungkit fills
(a phantom set, a fetched dataset, a run) carries a marker file saying so (`write_marker`);
lungkit removes or replaces files only in folders that carry its marker. `data_hash` and
`files_fingerprint` are the content keys by which caches and finished runs are recognised.
TensorFlow-free (numpy and the stdlib).
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

MARKER_SUFFIX = ".lungkit.json"  # `<folder>/.<kind>.lungkit.json`: lungkit made this folder


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path` atomically.

    Write the whole file to the yielded path (any writer that takes a file name: numpy,
    Keras, PIL). On an exception the temporary file is removed and `path` is untouched; an
    `OSError` such as a full disk or a read-only folder is re-raised naming `path` and
    saying that its previous version was kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the real suffixes stay last: some writers choose the format by them (Keras wants
    # ".weights.h5" or ".keras", numpy ".npz")
    handle, named = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent,
                                     suffix=".part" + "".join(path.suffixes[-2:]))
    os.close(handle)
    named = Path(named)
    try:
        yield named
        os.replace(named, path)
    except OSError as error:
        named.unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            kept = "its previous version was kept" if path.exists() else "nothing was written"
            raise OSError(error.errno, f"Could not write {path} ({os.strerror(error.errno)}); "
                                       f"{kept}.") from error
        raise
    except BaseException:
        named.unlink(missing_ok=True)
        raise


def remove_temporaries(folder, names=None):
    """Removes the temporary files `atomic_path` left in `folder` when a kill stopped a write.

    Only files named as `atomic_path` names them (`.<target>.<random>.part<suffixes>`) are
    removed, for the targets in `names` (None: any target), so nothing lungkit did not write
    is touched. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir() or (names is not None and not names):
        return []
    targets = "|".join(re.escape(n) for n in names) if names is not None else r"[^/]+"
    pattern = re.compile(rf"\.(?:{targets})\.[A-Za-z0-9_]+\.part(?:\.[^/]*)?")
    removed = [path for path in folder.iterdir() if path.is_file() and pattern.fullmatch(path.name)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def write_bytes(path, data):
    """Writes `data` to `path` atomically (see `atomic_path`); returns `path`."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path, text):
    """Writes UTF-8 `text` to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, data, **dumps_kwargs):
    """Writes `data` as indented JSON to `path` atomically; returns `path`."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


def read_json(path, what="file"):
    """Reads a JSON file that lungkit wrote.

    Raises:
        FileNotFoundError: `path` is missing.
        ValueError: naming `path` and `what` it is, when it is empty, not UTF-8 or not JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("it is empty")
        return json.loads(text)
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"The {what} {path} is corrupt ({error}); delete it or restore it "
                         f"from a copy.") from error


def marker_path(folder, kind):
    """Where the marker of a folder of `kind` ("phantom", "dataset", "run") lives."""
    return Path(folder) / f".{kind}{MARKER_SUFFIX}"


def read_marker(folder, kind):
    """The marker's content, or None when the folder carries no readable `kind` marker."""
    try:
        return read_json(marker_path(folder, kind), f"{kind} marker")
    except (FileNotFoundError, ValueError, OSError):
        return None


def write_marker(folder, kind, content):
    """Marks `folder` as filled by lungkit (`content`: what was written, JSON-ready)."""
    return write_json(marker_path(folder, kind), content)


def is_empty_folder(folder):
    """True for a missing folder or one with no entries."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def data_hash(*arrays):
    """A short, stable sha1 of arrays' shapes, dtypes and bytes (the cache key of real data)."""
    digest = hashlib.sha1()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def files_fingerprint(paths):
    """A short sha1 of file paths with their sizes and modification times (streamed data).

    Paths enter as `os.fsencode` bytes, so a name that is not valid UTF-8 works too.
    """
    digest = hashlib.sha1()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(os.fsencode(path) + b"\0missing\n")
    return digest.hexdigest()[:16]
