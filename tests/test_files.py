"""`lungkit.files`: atomic writes keep the previous version through a failure or a full disk;
markers and JSON reads name the file; hashes change with content, not with identity."""

import errno
import os

import numpy as np
import pytest

from lungkit import files


def _leftovers(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_path_replaces_the_target_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "model.weights.h5"
    with files.atomic_path(target) as temporary:
        # a writer that picks the format by suffix sees the real suffixes last
        assert temporary.name.endswith(".weights.h5") and temporary.parent == target.parent
        assert not target.exists()
        temporary.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    assert _leftovers(target.parent, target.name) == []


def test_a_failing_writer_leaves_the_previous_version_and_no_temporary(tmp_path):
    target = files.write_text(tmp_path / "history.csv", "epoch\n0\n")
    with pytest.raises(RuntimeError, match="writer broke"):
        with files.atomic_path(target) as temporary:
            temporary.write_text("epoch\n0\n1")  # half written
            raise RuntimeError("writer broke")
    assert target.read_text() == "epoch\n0\n"
    assert _leftovers(tmp_path, target.name) == []
    with pytest.raises(KeyboardInterrupt):  # an interrupt, not only an Exception
        with files.atomic_path(target) as temporary:
            temporary.write_text("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "epoch\n0\n"
    assert _leftovers(tmp_path, target.name) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_names_the_path_and_what_was_kept(tmp_path, code):
    target = files.write_json(tmp_path / "metrics.json", {"kid": 1.0})

    def full_disk(temporary):
        with open(temporary, "wb") as handle:
            handle.write(b"{")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError, match="previous version was kept") as caught:
        with files.atomic_path(target) as temporary:
            full_disk(temporary)
    assert caught.value.errno == code and str(target) in str(caught.value)
    assert files.read_json(target) == {"kid": 1.0}
    assert _leftovers(tmp_path, target.name) == []
    fresh = tmp_path / "new.json"
    with pytest.raises(OSError, match="nothing was written"):
        with files.atomic_path(fresh) as temporary:
            full_disk(temporary)
    assert not fresh.exists()


def test_other_os_errors_pass_unchanged(tmp_path):
    error = OSError(errno.EIO, "I/O error")
    with pytest.raises(OSError) as caught:
        with files.atomic_path(tmp_path / "a.txt"):
            raise error
    assert caught.value is error


@pytest.mark.parametrize("content, problem", [
    (b"", "it is empty"), (b"  \n", "it is empty"), (b"{\"a\": ", "Expecting value"),
    (b"\xff\xfe\x00", "codec"),
])
def test_read_json_names_a_corrupt_file(tmp_path, content, problem):
    path = tmp_path / "diffusion.run.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="run record") as caught:
        files.read_json(path, "run record")
    assert str(path) in str(caught.value) and problem in str(caught.value)
    with pytest.raises(FileNotFoundError):
        files.read_json(tmp_path / "missing.json")


def test_markers_round_trip_and_a_corrupt_marker_is_no_marker(tmp_path):
    assert files.read_marker(tmp_path, "phantom") is None
    files.write_marker(tmp_path, "phantom", {"per_class": 4})
    assert files.read_marker(tmp_path, "phantom") == {"per_class": 4}
    assert files.read_marker(tmp_path, "dataset") is None  # another kind
    files.marker_path(tmp_path, "dataset").write_bytes(b"\x00\x00")
    assert files.read_marker(tmp_path, "dataset") is None
    assert not files.is_empty_folder(tmp_path)
    assert files.is_empty_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert files.is_empty_folder(tmp_path / "empty")


def test_data_hash_follows_content_shape_and_dtype():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert files.data_hash(a) == files.data_hash(a.copy())
    assert files.data_hash(a) != files.data_hash(a.reshape(4, 3))
    assert files.data_hash(a) != files.data_hash(a.astype(np.float64))
    b = a.copy()
    b[2, 3] += 1
    assert files.data_hash(a) != files.data_hash(b)
    assert files.data_hash(a.T) == files.data_hash(np.ascontiguousarray(a.T))


def test_files_fingerprint_sees_size_time_and_odd_names(tmp_path):
    path = tmp_path / "slice.jpg"
    path.write_bytes(b"abc")
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")  # not valid UTF-8
    with open(odd, "wb") as handle:
        handle.write(b"x")
    first = files.files_fingerprint([path, odd])
    assert first == files.files_fingerprint([path, odd])
    path.write_bytes(b"abcd")
    assert files.files_fingerprint([path, odd]) != first
    os.utime(path, ns=(0, 0))
    second = files.files_fingerprint([path, odd])
    os.utime(path, ns=(1, 1))
    assert files.files_fingerprint([path, odd]) != second
    assert files.files_fingerprint([tmp_path / "gone.jpg"]) != files.files_fingerprint([path])


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (root only, and only where mounting is allowed; skipped otherwise)."""
    import subprocess

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_previous_model(small_disk):
    import keras

    from lungkit.training.runs import save_model

    def dense(units):
        model = keras.Sequential([keras.Input((units,)), keras.layers.Dense(units)])
        return model

    target = small_disk / "vae.keras"
    save_model(dense(64), target)  # ~20 KB: fits
    kept = target.read_bytes()
    with pytest.raises(OSError, match="previous version was kept") as caught:
        save_model(dense(1024), target)  # 4 MB of weights on a 1 MiB disk
    assert caught.value.errno == errno.ENOSPC and str(target) in str(caught.value)
    assert target.read_bytes() == kept
    assert sorted(p.name for p in small_disk.iterdir()) == ["vae.keras"]  # no temporary left
    assert keras.saving.load_model(target).count_params() == 64 * 64 + 64


def test_remove_temporaries_takes_only_what_atomic_path_names(tmp_path):
    keep = ["vae.keras", ".vae.keras", "notes.part", ".vae.keras.backup", ".other.keras.ab12.part.keras"]
    for name in keep:
        (tmp_path / name).write_text("user")
    stale = [".vae.keras.x1y2_z3.part.keras", ".history.csv.q9w8e7.part.csv"]
    for name in stale:
        (tmp_path / name).write_text("half")
    removed = files.remove_temporaries(tmp_path, ["vae.keras", "history.csv"])
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert files.remove_temporaries(tmp_path, []) == []
    assert [p.name for p in files.remove_temporaries(tmp_path)] == [".other.keras.ab12.part.keras"]
    assert files.remove_temporaries(tmp_path / "absent") == []
