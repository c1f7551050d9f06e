"""`lungkit data phantom|fetch|info` through cli.main (other commands: their own test files)."""

import json
import sys
import types

import pytest

from lungkit.cli import main


def test_help_texts_are_useful(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("phantom", "fetch", "info", "IQ-OTH/NCCD"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["data", "fetch", "--help"])
    text = capsys.readouterr().out
    assert "kaggle:" in text and "--sha256" in text and "Drive" in text
    assert main(["data"]) == 2  # no sub-command: prints help


@pytest.mark.parametrize("command, words", [
    ("demo", ("phantom", "report.html", "--out")),
    ("evaluate", ("FID", "--features", "JSON")),
])
def test_demo_and_evaluate_help_describe_the_command(command, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    usage, description, *_ = capsys.readouterr().out.split("\n\n")
    assert usage.startswith(f"usage: lungkit {command}")
    assert not description.startswith("options:")  # a description, not just the options
    for word in words:
        assert word in description


def test_data_phantom_passes_its_options(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_make_phantom_dataset(root, per_class=40, size=512, seed=0, progress=True):
        calls.append((str(root), per_class, size, seed))
        return tmp_path / "phantom"

    stub = types.ModuleType("lungkit.data.phantom")
    stub.make_phantom_dataset = fake_make_phantom_dataset
    monkeypatch.setitem(sys.modules, "lungkit.data.phantom", stub)
    args = ["data", "phantom", "--out", str(tmp_path / "p"), "--per-class", "3", "--size",
            "32", "--seed", "7"]
    assert main(args) == 0
    assert calls == [(str(tmp_path / "p"), 3, 32, 7)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "phantom")


def test_data_fetch_then_info(dataset_zip, tmp_path, capsys):
    out = tmp_path / "fetched"
    assert main(["data", "fetch", str(dataset_zip), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["data", "fetch", str(dataset_zip), "--out", str(out)]) == 0  # no-op

    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 readable of 6 image files" in text and "16x16: 6" in text
    assert "Benign" in text and "unknown/other" in text

    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"] == {"Normal": 2, "Benign": 2, "Malignant": 2}


def test_data_errors_exit_1_with_a_message(dataset_zip, tmp_path, caplog):
    assert main(["data", "fetch", str(dataset_zip), "--out", str(tmp_path / "x"),
                 "--sha256", "0" * 64]) == 1
    assert "SHA-256 mismatch" in caplog.text
    assert main(["data", "info", str(tmp_path / "missing")]) == 1
    assert "does not exist" in caplog.text
    assert main(["data", "fetch", "http://127.0.0.1:9/none.zip", "--out",
                 str(tmp_path / "y")]) == 1  # ConnectionError: port 9 (discard) is closed
    assert "Could not reach" in caplog.text


def test_data_phantom_for_real(tmp_path):
    pytest.importorskip("lungkit.data.phantom")
    assert main(["data", "phantom", "--out", str(tmp_path / "p"), "--per-class", "1",
                 "--size", "64"]) == 0
    info = json.loads(_run_info_json(tmp_path / "p"))
    assert info["counts"] == {"Normal": 1, "Benign": 1, "Malignant": 1}


def _run_info_json(path):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["data", "info", str(path), "--json"])
    return buffer.getvalue()
