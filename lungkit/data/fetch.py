"""Getting a dataset onto disk: Google Drive, Kaggle, http(s) or a local zip.

The only lungkit module that touches the network. `fetch_dataset` is idempotent (a marker
file in `dest` makes a second call return at once) and atomic (downloads go to a `.part`
file and archives are extracted into a temporary folder renamed into place at the end, so an
interrupted run never looks complete). Zip extraction refuses entries that would escape the
destination (`../`, absolute paths, symlinks) and caps the uncompressed size (zip bombs).
"""

import glob
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MARKER_NAME = ".lungkit-complete"  # written last into dest; its presence means "done"
DEFAULT_MAX_BYTES = 20 * 2**30  # 20 GiB: any download and any archive's uncompressed total
# Largest uncompressed/compressed ratio accepted for one entry of at least
# RATIO_MIN_BYTES: JPG/PNG slices compress ~1:1, raw DICOM ~3:1, zip bombs ~1000:1.
MAX_COMPRESSION_RATIO = 100
RATIO_MIN_BYTES = 2**20  # small entries (text files) may compress as well as they like
MAX_ENTRIES = 20_000  # IQ-OTH/NCCD has ~1,100 slices, LIDC exports a few thousand
# The same ratio over the whole archive: many small entries at 900:1 pass the per-entry rule.
MAX_TOTAL_RATIO = MAX_COMPRESSION_RATIO
CHUNK_BYTES = 2**20
DRIVE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{25,}$")  # Drive file ids are ~28-44 characters
SOURCES_HELP = ("a Google Drive file id or share link, 'kaggle:owner/dataset', an http(s) URL "
                "of a .zip, or a local .zip file")


def sha256_of(path):
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path, sha256, source):
    actual = sha256_of(path)
    if sha256 is not None and actual.lower() != sha256.strip().lower():
        raise ValueError(f"SHA-256 mismatch for {source!r}: expected `sha256`={sha256}, "
                         f"the file has {actual}. The download may be corrupt or the source "
                         f"changed; nothing was extracted.")
    return actual


def _entry_mode(info):
    return (info.external_attr >> 16) & 0xFFFF


def _check_zip_names(infos):
    """Refuses duplicate entry names and a name that is both a file and a folder."""
    files, folders = set(), set()
    for info in infos:
        name = info.filename.replace("\\", "/").rstrip("/")
        if not info.is_dir():
            if name in files:
                raise ValueError(f"Refusing archive: entry {name!r} appears twice (one would "
                                 f"overwrite the other).")
            files.add(name)
        folders.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
        if info.is_dir():
            folders.add(name)
    clash = sorted(files & folders)
    if clash:
        raise ValueError(f"Refusing archive: {clash[0]!r} is both a file and a folder in it.")


def _check_zip_contents(infos):
    """Refuses an archive with no files, or whose files are all zips (a zip of the zip)."""
    names = [i.filename for i in infos if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    if not names:
        raise ValueError("Refusing archive: it holds no files.")
    if all(name.lower().endswith(".zip") for name in names):
        raise ValueError(f"Refusing archive: it holds only zip archives ({names[0]!r}...); "
                         f"extract the inner one and fetch that.")


def check_zip_entries(archive, max_bytes=DEFAULT_MAX_BYTES):
    """Validates every entry of an open `zipfile.ZipFile` before anything is extracted.

    Raises:
        ValueError: for an absolute path, a `..` component, a symlink entry, an encrypted
            entry, an entry whose compression ratio exceeds `MAX_COMPRESSION_RATIO`, or a
            total uncompressed size above `max_bytes`; more than `MAX_ENTRIES` entries, a
            whole-archive ratio above `MAX_TOTAL_RATIO`, a duplicate name or a name that is
            both a file and a folder; no files at all, or only zip files.
    """
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ValueError(f"Refusing archive: it has {len(infos)} entries, more than "
                         f"MAX_ENTRIES={MAX_ENTRIES}.")
    _check_zip_names(infos)
    _check_zip_contents(infos)
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ValueError(f"Refusing zip entry {name!r}: it would be written outside the "
                             f"destination folder (absolute path or '..').")
        if stat.S_ISLNK(_entry_mode(info)):
            raise ValueError(f"Refusing zip entry {name!r}: symbolic links are not extracted.")
        if info.flag_bits & 0x1:
            raise ValueError(f"Refusing zip entry {name!r}: it is encrypted.")
        total += info.file_size
    if total > max_bytes:
        raise ValueError(f"Refusing archive: it expands to {total} bytes, more than "
                         f"`max_bytes`={max_bytes}.")
    packed = sum(info.compress_size for info in infos)
    if total >= RATIO_MIN_BYTES and total > MAX_TOTAL_RATIO * max(packed, 1):
        raise ValueError(f"Refusing archive: it expands {packed} -> {total} bytes in all "
                         f"(ratio above {MAX_TOTAL_RATIO}), which looks like a zip bomb.")
    for info in infos:
        if (info.file_size >= RATIO_MIN_BYTES
                and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            raise ValueError(f"Refusing zip entry {info.filename!r}: it expands "
                             f"{info.compress_size} -> {info.file_size} bytes (ratio above "
                             f"{MAX_COMPRESSION_RATIO}), which looks like a zip bomb.")
    return total


def safe_extract(zip_path, dest, max_bytes=DEFAULT_MAX_BYTES, progress=True, name=None):
    """Extracts a zip into `dest` (an existing, empty folder) after `check_zip_entries`.

    Entries under `__MACOSX/` are skipped. Sizes are also counted while writing, so an entry
    whose header understates its size cannot exceed `max_bytes` either. `name` (default the
    path) names the archive in error messages, e.g. the URL it came from.
    """
    dest, name = Path(dest).resolve(), name or str(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{name!r} is not a valid zip archive ({error}).") from error
    with archive:
        check_zip_entries(archive, max_bytes)
        written = 0
        entries = [i for i in archive.infolist() if not i.filename.startswith("__MACOSX/")]
        for info in tqdm(entries, desc="Extracting", unit="file", disable=not progress):
            target = (dest / info.filename.replace("\\", "/")).resolve()
            if not target.is_relative_to(dest):  # belt and braces after check_zip_entries
                raise ValueError(f"Refusing zip entry {info.filename!r}: escapes {dest}.")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source, open(target, "wb") as out:
                    for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):  # noqa: B023
                        written += len(chunk)
                        if written > max_bytes:
                            raise ValueError(f"Refusing archive: more than `max_bytes`="
                                             f"{max_bytes} bytes extracted.")
                        out.write(chunk)
            except (zipfile.BadZipFile, EOFError, zlib.error) as error:
                raise ValueError(f"{name!r} is corrupt: entry {info.filename!r} "
                                 f"failed ({error}).") from error
    return dest


def download_url(url, path, max_bytes=DEFAULT_MAX_BYTES, progress=True, timeout=60):
    """Downloads `url` to `path` via `path + '.part'`, renamed only once complete.

    Raises:
        FileNotFoundError: the server answered 404.
        ConnectionError: any other HTTP error, or the host could not be reached.
        ValueError: the download is larger than `max_bytes`.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "lungkit"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > max_bytes:
                raise ValueError(f"{url} is {total} bytes, more than `max_bytes`={max_bytes}.")
            with tqdm(total=total, unit="B", unit_scale=True, desc="Downloading",
                      disable=not progress) as bar:
                received = 0
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):  # noqa: B023
                    received += len(chunk)
                    if received > max_bytes:
                        raise ValueError(f"{url} sent more than `max_bytes`={max_bytes} bytes.")
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
        os.replace(part, path)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise FileNotFoundError(f"{url} answered HTTP 404 Not Found: check the URL.") \
                from error
        raise ConnectionError(f"{url} answered HTTP {error.code} {error.reason}.") from error
    except urllib.error.URLError as error:
        raise ConnectionError(f"Could not reach {url}: {error.reason}. Check the network "
                              f"connection or the host name.") from error
    except (http.client.HTTPException, TimeoutError, ConnectionError) as error:
        raise ConnectionError(f"Download of {url} was interrupted ({type(error).__name__}: "
                              f"{error}); nothing was kept, run again to retry.") from error
    finally:
        part.unlink(missing_ok=True)
    return path


def _download_drive(source, directory, progress):
    import gdown  # imported here: only Drive users need it

    try:
        if "/folders/" in source:
            gdown.download_folder(url=source, output=str(directory / "drive"), quiet=not progress)
            return directory / "drive"
        kwargs = {"url": source, "fuzzy": True} if "://" in source else {"id": source}
        output = gdown.download(output=str(directory / "download.zip"), quiet=not progress,
                                **kwargs)
    except Exception as error:  # gdown raises its own exception types
        raise ConnectionError(f"gdown could not download {source!r} from Google Drive: {error}. "
                              f"Is the file shared as 'anyone with the link'?") from error
    if not output:
        raise ConnectionError(f"gdown could not download {source!r} from Google Drive.")
    return Path(output)


def _download_kaggle(handle, directory):
    import kagglehub  # imported here: only Kaggle users need it

    try:
        cached = Path(kagglehub.dataset_download(handle))
    except Exception as error:
        raise ConnectionError(f"kagglehub could not download {handle!r}: {error}. Private or "
                              f"competition data needs Kaggle credentials "
                              f"(~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY).") from error
    link = directory / handle.replace("/", "__")
    try:  # link to kagglehub's cache rather than copying hundreds of MB
        link.symlink_to(cached.resolve(), target_is_directory=True)
    except OSError:
        shutil.copytree(cached, link)
    return link


def _kind(source):
    if source.startswith("kaggle:"):
        handle = source.removeprefix("kaggle:").strip("/")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+(/.*)?", handle):
            raise ValueError(f"`source` 'kaggle:' must be followed by owner/dataset. "
                             f"Received: {source!r}")
        return "kaggle"
    scheme = urllib.parse.urlparse(source).scheme.lower()
    if scheme in ("http", "https"):
        host = urllib.parse.urlparse(source).netloc.lower()
        return "drive" if host.endswith(("drive.google.com", "docs.google.com")) else "url"
    if Path(source).expanduser().is_file():
        return "zip"
    if DRIVE_ID_PATTERN.match(source):
        return "drive"
    if source.lower().endswith(".zip"):
        raise FileNotFoundError(f"`source` zip file not found: {source!r}")
    raise ValueError(f"`source` must be {SOURCES_HELP}. Received: {source!r}")


STAGING_NAME = ".lungkit-staging"  # in a fetch's work folder: the pid of the fetch


def _clean_stale_staging(dest):
    """Removes work folders of killed fetches into `dest` (lungkit's marker, a dead pid)."""
    for work in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        try:
            pid = int((work / STAGING_NAME).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            logger.info("Removing %s, left by an interrupted fetch (pid %d).", work, pid)
            shutil.rmtree(work, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours, unreadable, or a live fetch (PermissionError)


def _read_marker(dest):
    try:
        return json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def fetch_dataset(source, dest, sha256=None, max_bytes=DEFAULT_MAX_BYTES, progress=True):
    """Downloads and extracts a dataset into `dest`, once.

    Args:
        source: a Google Drive file id, share link or folder link (gdown); `"kaggle:owner/name"`
            (kagglehub, linked into `dest`); an http(s) URL of a zip; or a local `.zip`.
        dest: folder to create; pass the returned path to `load_data`.
        sha256: optional expected hex SHA-256 of the archive (not for Kaggle or Drive folders).
        max_bytes: cap on the download size and on the archive's uncompressed size.
        progress: show download/extraction progress bars.

    Returns:
        `Path` of `dest`. A second call with the same source returns at once.

    Raises:
        ValueError: unknown source, SHA-256 mismatch, unsafe or corrupt zip, `dest` in use.
        FileNotFoundError: a local zip that is missing, or a URL answering 404.
        ConnectionError: network failures.
    """
    source, dest = str(source).strip(), Path(dest).expanduser()
    kind = _kind(source)
    if kind == "zip":
        source = str(Path(source).expanduser().resolve())
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise ValueError(f"`sha256` must be 64 hex digits. Received: sha256={sha256!r}")
    if sha256 is not None and (kind == "kaggle" or "/folders/" in source):
        raise ValueError(f"`sha256` applies to archives (zip, URL, Drive file), not to "
                         f"{source!r}.")
    marker = _read_marker(dest) if dest.is_dir() else None
    if marker is not None:
        if marker.get("source") != source:
            raise ValueError(f"`dest` {str(dest)!r} already holds a dataset fetched from "
                             f"{marker.get('source')!r}; choose another `dest` for {source!r}.")
        if sha256 and marker.get("sha256") and marker["sha256"] != sha256.strip().lower():
            raise ValueError(f"SHA-256 mismatch: `dest` {str(dest)!r} holds an archive with "
                             f"{marker['sha256']}, not `sha256`={sha256}.")
        logger.info("%s already fetched into %s; nothing to do.", source, dest)
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"`dest` {str(dest)!r} exists and is not an empty folder fetched by "
                         f"lungkit (no {MARKER_NAME} marker); remove it or choose another.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(dest)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (work / STAGING_NAME).write_text(str(os.getpid()))
        staging = work / "dataset"
        staging.mkdir()
        archive, digest = None, None
        if kind == "kaggle":
            _download_kaggle(source.removeprefix("kaggle:").strip("/"), staging)
        elif kind == "drive":
            archive = _download_drive(source, work, progress)
        elif kind == "url":
            archive = download_url(source, work / "download.zip", max_bytes, progress)
        else:
            archive = Path(source)
        if archive is not None and archive.is_dir():  # a Drive folder: move its content
            archive.rename(staging / archive.name)
        elif archive is not None:
            digest = _check_sha256(archive, sha256, source)
            safe_extract(archive, staging, max_bytes, progress, name=source)
        (staging / MARKER_NAME).write_text(json.dumps({"source": source, "sha256": digest}))
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("Fetched %s into %s.", source, dest)
    return dest
