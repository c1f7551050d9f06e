"""Tests for notebooks/make_readme_images.py --demo: the README shows a demo run's figures."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungkit.viz import save_small_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "make_readme_images", ROOT / "notebooks" / "make_readme_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_run(folder, width=1500):
    figures = folder / "figures"
    figures.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("fig2_vae_samples.png", "fig3_diffusion_samples.png"):
        Image.fromarray(rng.integers(0, 255, (300, width, 3), dtype="uint8")).save(figures / name)
    metrics = {"config": {"name": "quick", "image_size": 64}, "data": {"n_train": 101},
               "wall_seconds": 432.0,
               "machine": {"cpu": "Test CPU 9000", "cores": 2, "gpus": [],
                           "tensorflow": "2.99"},
               "claims": [{"verdict": "PASS"}, {"verdict": "PASS"}, {"verdict": "FAIL"}]}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_demo_figures_replace_only_the_marked_block(tool, tmp_path):
    run = _demo_run(tmp_path / "run")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{tool.DEMO_START}\nold text\n{tool.DEMO_END}\n"
                      "\nafter\n")
    images = tmp_path / "images"
    written = tool.write_demo_figures(run, readme=readme, images_dir=images)
    assert [p.name for p in written] == ["demo_vae.png", "demo_diffusion.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.width == 1000 and image.mode == "P"  # scaled down, palette
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old text" not in text
    assert "![VAE samples](docs/images/demo_vae.png)" in text
    caption = tool.demo_caption(json.loads((run / "metrics.json").read_text()))
    assert "took 7.2 min after the install, on 2 cores of Test CPU 9000, no GPU, TensorFlow 2.99" in caption
    assert "2 PASS, 1 FAIL" in caption and "INCONCLUSIVE" not in caption
    # run twice: the same README (the block is replaced, not appended)
    tool.write_demo_figures(run, readme=readme, images_dir=images)
    assert readme.read_text() == text


def test_demo_figures_refuse_a_folder_without_a_run_or_a_readme_without_markers(tool, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        tool.write_demo_figures(tmp_path, readme=readme, images_dir=tmp_path / "i")
    run = _demo_run(tmp_path / "run")
    with pytest.raises(ValueError, match="must hold the markers"):
        tool.write_demo_figures(run, readme=readme, images_dir=tmp_path / "i")
    assert readme.read_text() == "no markers\n"
    (run / "figures" / "fig3_diffusion_samples.png").unlink()
    readme.write_text(f"{tool.DEMO_START}\n{tool.DEMO_END}\n")
    with pytest.raises(FileNotFoundError, match="fig3_diffusion_samples.png"):
        tool.write_demo_figures(run, readme=readme, images_dir=tmp_path / "i")
    assert not (tmp_path / "i").exists()


def test_save_small_png_keeps_small_images_and_validates_width(tmp_path):
    source = tmp_path / "a.png"
    Image.fromarray(np.full((20, 30, 3), 128, "uint8")).save(source)
    target = save_small_png(source, tmp_path / "b.png")
    with Image.open(target) as image:
        assert image.size == (30, 20)
        assert np.asarray(image.convert("RGB"))[0, 0].tolist() == [128, 128, 128]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp left
    with pytest.raises(ValueError, match="max_width"):
        save_small_png(source, tmp_path / "c.png", max_width=0)
