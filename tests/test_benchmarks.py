"""Smoke test of the benchmark suite: `python -m benchmarks --quick` writes JSON and Markdown.

Runs the benchmarks that accept `--quick` (tiny sizes; about a minute on two cores) through
the same runner `make bench` uses, and checks the files and the keys the README quotes.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("phantom_speed", "vae_throughput", "scale", "evaluation_cost", "checkpoint_cost")  # the scripts that take --quick


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", ",".join(QUICK),
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_every_quick_benchmark_declares_the_flag():
    for name in QUICK:
        source = (ROOT / "benchmarks" / f"{name}.py").read_text()
        assert 'add_argument("--quick"' in source, name


def test_markdown_describes_the_machine_and_every_benchmark(quick_results):
    text = quick_results.read_text()
    assert text.startswith("# lungkit benchmarks") and "## Machine" in text
    assert "**cpu_count**" in text
    for name in QUICK:
        assert f"## {name}" in text
    assert "**failed**" not in text
    # lists of flat dicts became Markdown tables
    assert "| model | size | batch |" in text and "#### training" in text


def test_scale_json_has_every_model_and_measure(quick_results):
    result = json.loads((quick_results.parent / "scale.json").read_text())
    assert result["benchmark"] == "scale" and result["quick"] is True
    assert "failures" not in result
    assert {row["model"] for row in result["training"]} == {"vae", "denoiser", "diffusion"}
    for row in result["training"]:
        assert row["fit_images_per_s"] > 0 and row["bare_images_per_s"] > 0
        assert row["fit/bare"] > 0 and isinstance(row["meets_0.9"], bool)
    for row in result["input"]:
        assert row["streamed_images_per_s"] > 0 and row["cached/memory"] > 0
    assert {row["option"] for row in result["options"]} == {
        "channels=1", "mixed_bfloat16", "mixed_float16", "jit"}
    tasks = {row["task"] for row in result["generation"]}
    assert {"decode (generate)", "restore (1 pass)"} <= tasks
    assert any(task.startswith("DDIM") for task in tasks)
    assert any(task.startswith("DDPM") for task in tasks)
    for row in result["memory"]:
        assert row["peak_rss_case_mib"] >= row["peak_rss_after_first_fit_epoch_mib"] > 100
    assert result["load_1min_start"] is not None


def test_other_quick_results_are_written(quick_results):
    phantom = json.loads((quick_results.parent / "phantom_speed.json").read_text())
    assert phantom["slices"] == 6 and phantom["slices_per_second_cpu"] > 0
    vae = json.loads((quick_results.parent / "vae_throughput.json").read_text())
    assert vae["image_shape"] == [32, 32, 3] and vae["ratio_fit_over_bare"] > 0


def test_evaluation_cost_times_every_interval_at_every_size(quick_results):
    result = json.loads((quick_results.parent / "evaluation_cost.json").read_text())
    rows = result["intervals"]
    assert {row["n"] for row in rows} == {16, 32} and len(rows) == 6
    assert {row["task"].split(" (")[0] for row in rows} == {
        "kid_interval", "kid_difference", "sharpness bootstrap"}
    assert all(row["seconds"] > 0 and row["dims"] == 256 for row in rows)


def test_checkpoint_cost_compares_both_fits_each_round(quick_results):
    result = json.loads((quick_results.parent / "checkpoint_cost.json").read_text())
    (row,) = result["rounds"]
    assert row["plain_s"] > 0 and row["lungkit_s"] > 0
    assert result["median_ratio"] == row["ratio"]  # one round: its ratio is the median
    # the ratio is of the unrounded seconds; the printed ones are rounded to 0.01 s
    assert abs(row["ratio"] - row["lungkit_s"] / row["plain_s"]) < 0.05 * row["ratio"]
    assert result["meets_1.05"] == (result["median_ratio"] <= 1.05)
