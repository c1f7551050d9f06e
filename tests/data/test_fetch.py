"""lungkit.data.fetch: local zip, real HTTP on 127.0.0.1, unsafe zips, Drive/Kaggle stubs."""

import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from lungkit.data import fetch as fetch_module
from lungkit.data.fetch import MARKER_NAME, fetch_dataset, safe_extract
from lungkit.data.images import load_data


@pytest.fixture
def server(dataset_zip):
    """An HTTP server on 127.0.0.1 serving the zip's folder; `.requests` lists each GET path."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path == "/truncated.zip":  # promise 1000 bytes, send 10, hang up
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"PK" * 5)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(dataset_zip.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.requests = requests
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


def test_local_zip_extracts_and_is_idempotent(dataset_zip, tmp_path, monkeypatch):
    dest = fetch_dataset(dataset_zip, tmp_path / "out", progress=False)
    assert (dest / MARKER_NAME).is_file()
    images, labels = load_data(dest, size=8)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    monkeypatch.setattr(fetch_module, "safe_extract", lambda *a, **k: pytest.fail("re-extracted"))
    assert fetch_dataset(dataset_zip, tmp_path / "out", progress=False) == dest
    assert _no_leftovers(tmp_path)


def test_url_download_progress_idempotence_and_sha(server, dataset_zip, tmp_path):
    url = f"{server.base_url}/iq.zip"
    digest = hashlib.sha256(dataset_zip.read_bytes()).hexdigest()
    dest = fetch_dataset(url, tmp_path / "web", sha256=digest.upper(), progress=False)
    assert load_data(dest, size=8)[0].shape == (6, 8, 8, 3)
    assert server.requests == ["/iq.zip"]
    fetch_dataset(url, tmp_path / "web", sha256=digest)  # no second request
    assert server.requests == ["/iq.zip"]
    with pytest.raises(ValueError, match="already holds a dataset fetched from"):
        fetch_dataset(dataset_zip, tmp_path / "web")
    assert _no_leftovers(tmp_path)


def test_url_errors(server, tmp_path):
    with pytest.raises(FileNotFoundError, match="HTTP 404"):
        fetch_dataset(f"{server.base_url}/missing.zip", tmp_path / "a", progress=False)
    with pytest.raises(ConnectionError, match="interrupted"):
        fetch_dataset(f"{server.base_url}/truncated.zip", tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="max_bytes"):
        fetch_dataset(f"{server.base_url}/iq.zip", tmp_path / "c", max_bytes=100, progress=False)
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionError, match="Could not reach"):
        fetch_dataset(f"http://127.0.0.1:{port}/x.zip", tmp_path / "d", progress=False)
    # Nothing half-done is left that could look complete.
    assert not any((tmp_path / name).exists() for name in "abcd")
    assert _no_leftovers(tmp_path)


def test_sha256_mismatch_extracts_nothing(dataset_zip, tmp_path):
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        fetch_dataset(dataset_zip, tmp_path / "out", sha256="0" * 64, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="64 hex digits"):
        fetch_dataset(dataset_zip, tmp_path / "out", sha256="abc")


def _zip_with(path, name, data=b"x", mode=None):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.external_attr = mode << 16
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("Normal cases/ok.txt", b"fine")
        out.writestr(info, data)
    return path


@pytest.mark.parametrize("name, mode, match", [
    ("../evil.txt", None, "outside the destination"),
    ("Normal cases/../../evil.txt", None, "outside the destination"),
    ("/tmp/evil.txt", None, "outside the destination"),
    ("C:/evil.txt", None, "outside the destination"),
    ("Normal cases/link", 0o120777, "symbolic links"),
])
def test_unsafe_entries_are_refused(tmp_path, name, mode, match):
    archive = _zip_with(tmp_path / "bad.zip", name, b"/etc/passwd" if mode else b"x", mode)
    with pytest.raises(ValueError, match=match):
        fetch_dataset(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert _no_leftovers(tmp_path)


def test_zip_bomb_is_refused(tmp_path):
    archive = _zip_with(tmp_path / "bomb.zip", "Normal cases/zeros.bin", bytes(3 * 2**20))
    assert archive.stat().st_size < 20_000  # 3 MiB of zeros deflate to a few KB
    with pytest.raises(ValueError, match="more than `max_bytes`=1000000"):
        fetch_dataset(archive, tmp_path / "out", max_bytes=1_000_000, progress=False)
    with pytest.raises(ValueError, match="zip bomb"):  # ratio ~1000:1 under the default cap
        fetch_dataset(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_understated_sizes_are_caught_while_writing(tmp_path, monkeypatch):
    archive = _zip_with(tmp_path / "big.zip", "Normal cases/data.bin", bytes(range(256)) * 64)
    monkeypatch.setattr(fetch_module, "check_zip_entries", lambda *args: 0)  # trust no header
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="more than `max_bytes`=1000 bytes extracted"):
        safe_extract(archive, tmp_path / "out", max_bytes=1000, progress=False)


def test_corrupt_entry_is_a_clear_error(tmp_path):
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w") as out:  # stored, so the payload bytes are visible
        out.writestr("Normal cases/a.txt", b"A" * 1000)
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"A" * 1000, b"A" * 500 + b"B" * 500))
    with pytest.raises(ValueError, match="is corrupt: entry 'Normal cases/a.txt'"):
        fetch_dataset(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_bad_zip_and_bad_sources(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match="not a valid zip archive"):
        fetch_dataset(tmp_path / "junk.zip", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="zip file not found"):
        fetch_dataset(tmp_path / "missing.zip", tmp_path / "out")
    with pytest.raises(ValueError, match="`source` must be a Google Drive file id"):
        fetch_dataset("not a source", tmp_path / "out")
    with pytest.raises(ValueError, match="owner/dataset"):
        fetch_dataset("kaggle:nothing", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        fetch_dataset(tmp_path / "junk.zip", tmp_path / "busy")


DRIVE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"


@pytest.mark.parametrize("source, expected", [
    (DRIVE_ID, {"id": DRIVE_ID}),
    (f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing",
     {"url": f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing", "fuzzy": True}),
])
def test_google_drive_via_gdown(dataset_zip, tmp_path, monkeypatch, source, expected):
    import gdown

    calls = []

    def fake_download(output, quiet, **kwargs):
        calls.append(kwargs)
        with open(output, "wb") as out:
            out.write(dataset_zip.read_bytes())
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    dest = fetch_dataset(source, tmp_path / "drive", progress=False)
    assert calls == [expected]
    assert load_data(dest, size=8)[1].tolist() == [0, 0, 1, 1, 2, 2]
    fetch_dataset(source, tmp_path / "drive")
    assert len(calls) == 1

    monkeypatch.setattr(gdown, "download", lambda **kwargs: None)
    with pytest.raises(ConnectionError, match="gdown could not download"):
        fetch_dataset(source, tmp_path / "drive2", progress=False)


def test_google_drive_folder_via_gdown(make_iq_dir, tmp_path, monkeypatch):
    import gdown

    def fake_download_folder(url, output, quiet):
        make_iq_dir(per_class=1, size=8, root=Path(output), top=())
        return [output]

    monkeypatch.setattr(gdown, "download_folder", fake_download_folder)
    source = f"https://drive.google.com/drive/folders/{DRIVE_ID}"
    dest = fetch_dataset(source, tmp_path / "folder", progress=False)
    assert load_data(dest, size=8)[1].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="`sha256` applies to archives"):
        fetch_dataset(source, tmp_path / "other", sha256="0" * 64)


def test_kaggle_via_kagglehub(make_iq_dir, tmp_path, monkeypatch):
    import kagglehub

    cache = make_iq_dir(per_class=1, size=8, root=tmp_path / "kaggle-cache",
                        top=("The IQ-OTHNCCD lung cancer dataset",) * 2)
    calls = []

    def fake_download(handle):
        calls.append(handle)
        return str(cache)

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    source = "kaggle:hamdallak/the-iqothnccd-lung-cancer-dataset"
    dest = fetch_dataset(source, tmp_path / "kaggle")
    assert calls == ["hamdallak/the-iqothnccd-lung-cancer-dataset"]
    assert load_data(dest, size=8)[1].tolist() == [0, 1, 2]  # nested 3 levels below dest
    fetch_dataset(source, tmp_path / "kaggle")
    assert len(calls) == 1
    with pytest.raises(ValueError, match="`sha256` applies to archives"):
        fetch_dataset(source, tmp_path / "k2", sha256="0" * 64)

    def failing(handle):
        raise RuntimeError("403 Forbidden")

    monkeypatch.setattr(kagglehub, "dataset_download", failing)
    with pytest.raises(ConnectionError, match="kagglehub could not download.*403"):
        fetch_dataset(source, tmp_path / "k3")


@pytest.mark.parametrize("name, match", [
    ("Normal cases/ok.txt", "'Normal cases/ok.txt' appears twice"),  # duplicate of the first
    ("Normal cases/ok.txt/inner.txt", "'Normal cases/ok.txt' is both a file and a folder"),
])
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_duplicate_and_clashing_names_are_refused(tmp_path, name, match):
    archive = _zip_with(tmp_path / "bad.zip", name)
    with pytest.raises(ValueError, match=match):
        fetch_dataset(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_entry_count_and_total_ratio_caps(tmp_path, monkeypatch):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as out:
        for i in range(6):  # each entry under RATIO_MIN_BYTES, ~1000:1 together
            out.writestr(f"Normal cases/{i}.bin", bytes(2**19))
    with pytest.raises(ValueError, match=r"expands \d+ -> 3145728 bytes in all"):
        fetch_dataset(many, tmp_path / "out", progress=False)
    monkeypatch.setattr(fetch_module, "MAX_ENTRIES", 5)
    with pytest.raises(ValueError, match="6 entries, more than MAX_ENTRIES=5"):
        fetch_dataset(many, tmp_path / "out", progress=False)
    monkeypatch.setattr(fetch_module, "MAX_ENTRIES", 6)
    monkeypatch.setattr(fetch_module, "MAX_TOTAL_RATIO", 10**6)  # within both caps: extracted
    fetch_dataset(many, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / MARKER_NAME).exists()


def test_empty_and_zip_in_zip_archives_are_refused(tmp_path, dataset_zip):
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as out:
        out.writestr("Normal cases/", b"")
    with pytest.raises(ValueError, match="holds no files"):
        fetch_dataset(empty, tmp_path / "out", progress=False)
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as out:
        out.write(dataset_zip, "inner.ZIP")
    with pytest.raises(ValueError, match=r"only zip archives \('inner.ZIP'"):
        fetch_dataset(nested, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path)


def test_staging_of_a_killed_fetch_is_cleaned_up(dataset_zip, tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / ".out.killed"
    (stale / "dataset").mkdir(parents=True)
    (stale / fetch_module.STAGING_NAME).write_text(dead)
    foreign = tmp_path / ".out.someone-elses"  # no lungkit marker: left alone
    foreign.mkdir()
    fetch_dataset(dataset_zip, tmp_path / "out", progress=False)
    assert not stale.exists() and foreign.exists()
    assert (tmp_path / "out" / MARKER_NAME).exists()
