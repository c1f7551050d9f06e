"""Tests for lungkit.viz: grid geometry, dtype handling and figure files."""

import csv

import numpy as np
import pytest
from PIL import Image

from lungkit import viz


def test_grid_shape_math():
    assert viz.grid_shape(16) == (4, 4)
    assert viz.grid_shape(10) == (3, 4)
    assert viz.grid_shape(5, ncols=2) == (3, 2)
    assert viz.grid_shape(3, ncols=10) == (1, 3)
    with pytest.raises(ValueError, match="at least one image"):
        viz.grid_shape(0)


def test_image_grid_geometry_and_placement():
    images = np.zeros((5, 8, 6, 3), "float32")
    images[4] = 1.0  # last tile white: row 1, column 1 with ncols=3
    grid = viz.image_grid(images, ncols=3, pad=2)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 6 + 4 * 2, 3)
    top, left = 2 + 8 + 2, 2 + 6 + 2
    assert (grid[top:top + 8, left:left + 6] == 255).all()
    assert (grid[2:10, 2:8] == 0).all()  # first tile black
    assert (grid[0] == 255).all()  # white border


def test_image_grid_accepts_uint8_and_one_channel():
    gray = np.full((4, 5, 5, 1), 0.5, "float32")
    grid = viz.image_grid(gray, pad=0)
    assert grid.shape == (10, 10, 3) and (grid == 128).all()
    as_uint8 = viz.image_grid(np.full((4, 5, 5), 7, np.uint8), pad=0)
    assert (as_uint8 == 7).all()
    with pytest.raises(ValueError, match="must have shape"):
        viz.image_grid(np.zeros((2, 5, 5, 2)))
    with pytest.raises(TypeError, match="float in \\[0, 1\\] or uint8"):
        viz.image_grid(np.zeros((2, 5, 5, 3), np.int32))


def test_image_grid_labels_add_a_caption_band():
    images = np.zeros((2, 16, 16, 3), "float32")
    grid = viz.image_grid(images, ncols=2, labels=["Normal", "Malignant"], pad=2)
    assert grid.shape == (16 + viz.CAPTION_HEIGHT + 4, 2 * 16 + 6, 3)
    assert (grid[2:2 + viz.CAPTION_HEIGHT] < 255).any()  # text drawn in the band
    with pytest.raises(ValueError, match="one entry per image"):
        viz.image_grid(images, labels=["only one"])


def test_save_grid_writes_exact_pixels_and_titled_png(tmp_path):
    images = np.random.rand(4, 8, 8, 1).astype("float32")
    path = viz.save_grid(images, tmp_path / "grid.png", ncols=2)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")),
                                  viz.image_grid(images, ncols=2))
    titled = viz.save_grid(images, tmp_path / "sub" / "titled.png", title="VAE samples")
    assert Image.open(titled).size[1] > viz.image_grid(images).shape[0]


def test_plot_history_from_dict_and_csv(tmp_path):
    history = {"loss": [3.0, 2.0, 1.5], "kl_loss": [1.0, 2.0, 2.5], "val_loss": [3.2, 2.4, 2.0]}
    fig = viz.plot_history(history, path=tmp_path / "dict.png", title="VAE")
    assert (tmp_path / "dict.png").stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes] == ["loss", "kl_loss"]
    assert len(fig.axes[0].lines) == 2  # val_loss shares the loss subplot

    log = tmp_path / "log.csv"
    with log.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "kl_loss", "loss", "reconstruction_loss"])
        for epoch in range(3):
            writer.writerow([epoch, 50 + epoch, 37000 - epoch, 36950 - 2 * epoch])
    fig = viz.plot_history(log, keys=["loss", "kl_loss"], path=tmp_path / "csv.png")
    assert Image.open(tmp_path / "csv.png").format == "PNG"
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [1, 2, 3])
    with pytest.raises(ValueError, match="must name logged metrics"):
        viz.plot_history(history, keys=["accuracy"])
    with pytest.raises(FileNotFoundError):
        viz.plot_history(tmp_path / "missing.csv")


def test_plot_history_from_keras_history_object():
    class FakeHistory:
        history = {"loss": [2.0, 1.0]}

    fig = viz.plot_history(FakeHistory())
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [2.0, 1.0])


def test_comparison_figure_one_row_per_model(tmp_path):
    rows = {"VAE": np.random.rand(4, 16, 16, 3).astype("float32"),
            "DDPM": (np.random.rand(3, 32, 32, 1) * 255).astype(np.uint8)}
    fig = viz.comparison_figure(rows, tmp_path / "compare.png", ncols=4)
    assert (tmp_path / "compare.png").is_file()
    assert len(fig.axes) == 2 * 4
    assert [fig.axes[0].get_ylabel(), fig.axes[4].get_ylabel()] == ["VAE", "DDPM"]


def test_show_grid_returns_a_figure():
    fig = viz.show_grid(np.zeros((2, 8, 8, 3), "float32"), title="t")
    assert fig.axes


def test_bar_chart_writes_png_and_skips_missing_values(tmp_path):
    from lungkit import viz

    fig = viz.bar_chart(["VAE", "DDIM-50", "broken"], [900.0, 3.5, float("nan")],
                        tmp_path / "speed.png", xlabel="images/s", log=True)
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert len(fig.axes[0].patches) == 2
    with pytest.raises(ValueError, match="same length"):
        viz.bar_chart(["a"], [1.0, 2.0])


def test_plot_history_reads_na_cells(tmp_path):
    from lungkit import viz

    log = tmp_path / "history.csv"
    log.write_text("epoch,loss,val_loss\n0,1.0,NA\n1,0.5,NA\n")
    fig = viz.plot_history(log, path=tmp_path / "c.png")
    assert (tmp_path / "c.png").exists() and len(fig.axes) == 1
