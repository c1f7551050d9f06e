"""Tests for lungkit.data.sources: given folders, fetched sources and the phantom fallback."""

import sys

import pytest

from lungkit.data import sources
from lungkit.data.images import list_image_files
from lungkit.data.phantom import make_phantom_dataset


def test_a_given_folder_is_returned_and_a_missing_one_named(make_iq_dir, tmp_path):
    root = make_iq_dir(per_class=1)
    assert sources.resolve_data_dir(root) == root
    with pytest.raises(FileNotFoundError, match="`data_dir` does not exist.*nope"):
        sources.resolve_data_dir(tmp_path / "nope")


def test_each_source_is_fetched_into_its_own_folder(dataset_zip, make_iq_dir, tmp_path):
    first = sources.resolve_data_dir(source=dataset_zip, root=tmp_path / "data", progress=False)
    assert first == sources.source_dir(dataset_zip, tmp_path / "data")
    assert len(list_image_files(first)) == 6
    assert sources.resolve_data_dir(source=dataset_zip, root=tmp_path / "data",
                                    progress=False) == first  # fetched once
    other_zip = tmp_path / "other.zip"
    other_zip.write_bytes(dataset_zip.read_bytes())
    second = sources.resolve_data_dir(source=other_zip, root=tmp_path / "data", progress=False)
    assert second != first and second.name.startswith("other-")  # no "already holds" error


def test_the_phantom_fallback_is_named_by_its_settings_and_made_once(tmp_path, caplog):
    caplog.set_level("INFO", logger="lungkit")
    made = sources.resolve_data_dir(root=tmp_path, phantom_per_class=2, phantom_size=32, seed=1,
                                    progress=False)
    assert made.parent == tmp_path / "phantom-2x32px-seed1" and len(list_image_files(made)) == 6
    caplog.clear()
    again = sources.resolve_data_dir(root=tmp_path, phantom_per_class=2, phantom_size=32, seed=1,
                                     progress=False)
    assert again == made and "already in" in caplog.text


def test_the_phantom_never_writes_into_a_folder_it_did_not_make(make_iq_dir, tmp_path):
    real = make_iq_dir(per_class=3)
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already holds files that lungkit did not write"):
        make_phantom_dataset(real, per_class=2, size=32, progress=False)
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before


def test_a_killed_phantom_run_is_finished_and_stale_slices_go(tmp_path):
    root = tmp_path / "phantom"
    folder = make_phantom_dataset(root, per_class=3, size=32, progress=False)
    leftover = folder / "Normal cases" / ".Normal case (2).jpg.abc.part.jpg"
    leftover.write_bytes(b"half")
    (root / ".phantom.lungkit.json").write_text('{"complete": false}')  # as a kill leaves it
    make_phantom_dataset(root, per_class=2, size=32, progress=False)
    names = sorted(p.name for p in (folder / "Normal cases").iterdir())
    assert names == ["Normal case (1).jpg", "Normal case (2).jpg"]


def test_mount_drive_outside_colab(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "google.colab", None)  # makes the import fail
    assert not sources.in_colab()
    with pytest.raises(RuntimeError, match="only in Google Colab.*fetch_dataset"):
        sources.mount_drive()
    with caplog.at_level("INFO", logger="lungkit.data.sources"):
        assert sources.mount_drive(required=False) is None
    assert "only in Google Colab" in caplog.text
