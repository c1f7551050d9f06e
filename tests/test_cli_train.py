"""Tests for `lungkit train` and `lungkit sample` (lungkit/cli/train.py)."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from lungkit import cli
from lungkit.models.registry import model_class
from lungkit.training.runs import read_history

TINY = {  # model-specific constructor arguments (--set) that make each model tiny
    "vae": ["widths=8,16", "latent_dim=8", "dense_units=0"],
    "denoiser": ["widths=8,16", "groups=4"],
    "diffusion": ["widths=8,16", "blocks_per_level=1", "timesteps=20"],
}


def _train_args(model, data, out, *extra):
    args = ["train", model, "--size", "32", "--channels", "1", "--epochs", "2",
            "--batch-size", "4", "--limit", "3", "--out", str(out), "--samples", "4",
            "--seed", "3", *extra]
    if data is not None:
        args += ["--data", str(data)]
    for pair in TINY[model]:
        args += ["--set", pair]
    return args


def test_train_vae_writes_model_history_curves_and_samples(phantom_dir, tmp_path, capsys):
    assert cli.main(_train_args("vae", phantom_dir, tmp_path)) == 0
    assert {"vae.keras", "vae.best.keras", "vae.run.json", "history.csv", "curves.png",
            "samples.png", "backup"} <= {p.name for p in tmp_path.iterdir()}
    history = read_history(tmp_path / "history.csv")
    assert history["epoch"] == [0, 1]
    assert set(history) == {"epoch", "epoch_seconds", "images_per_second", "loss",
                            "reconstruction_loss", "kl_loss"}  # no empty val_* columns
    assert all(np.isfinite(history["loss"]))
    # 4 samples of 32 px in a grid: wider than one image, RGB
    grid = np.asarray(Image.open(tmp_path / "samples.png"))
    assert grid.ndim == 3 and grid.shape[1] > 32
    assert "vae.keras (2 epochs; loss" in capsys.readouterr().out

    out = tmp_path / "grid.png"
    assert cli.main(["sample", "vae", "--model", str(tmp_path / "vae.keras"), "-n", "2",
                     "--seed", "1", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 32
    # options of another model are refused with a clear message
    assert cli.main(["sample", "vae", "--model", str(tmp_path / "vae.keras"), "--steps", "5",
                     "--out", str(out)]) == 1

    # `lungkit evaluate`: every number names its feature space; none trains on the reference
    metrics = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--model", str(tmp_path / "vae.keras"), "--data",
                     str(phantom_dir), "--train", str(phantom_dir), "-n", "6", "--features",
                     "domain", "--out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    spaces = set(result["feature_extractors"])
    assert spaces == {"random_cnn", "texture", "domain_encoder"}
    for space in spaces:
        low, high = result[f"kid_interval[{space}]"]
        assert low <= result[f"kid[{space}]"] <= high
    assert result["n_generated"] == 6 and result["n_real"] == 9  # 3 of 12 train the encoder
    assert result["memorization_share"] is not None
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == result
    with pytest.raises(SystemExit):  # the whole set for the encoder leaves no reference
        cli.main(["evaluate", "--model", str(tmp_path / "vae.keras"), "--data",
                  str(phantom_dir), "--encoder-fraction", "1"])
    assert "expected a number >= 0 and < 1, got 1" in capsys.readouterr().err


@pytest.mark.parametrize("model, precision", [("denoiser", "mixed_bfloat16"),
                                              ("diffusion", "float32")])
def test_train_other_models_streaming(model, precision, phantom_dir, tmp_path):
    args = _train_args(model, phantom_dir, tmp_path, "--stream", "--precision", precision)
    assert cli.main(args) == 0
    history = read_history(tmp_path / "history.csv")
    assert history["epoch"] == [0, 1] and all(np.isfinite(history["loss"]))
    assert (tmp_path / f"{model}.keras").exists() and (tmp_path / "samples.png").exists()


def test_train_without_data_uses_or_makes_the_phantom_set(phantom_dir, tmp_path, monkeypatch,
                                                          caplog):
    import lungkit.data.sources as sources

    monkeypatch.setattr(sources, "PHANTOM_SIZE", 32)  # the real generator, at a test's size
    monkeypatch.setattr(sources, "PHANTOM_PER_CLASS", 3)
    monkeypatch.chdir(tmp_path)  # the default root, data/, is relative
    caplog.set_level("INFO", logger="lungkit")
    args = _train_args("vae", None, tmp_path / "run", "--epochs", "1", "--samples", "0")
    assert cli.main(args) == 0
    folder = tmp_path / "data" / "phantom-3x32px-seed0"
    assert "using the synthetic phantom set" in caplog.text and "Writing 3 phantom" in caplog.text
    assert len(list(folder.rglob("*.jpg"))) == 9
    caplog.clear()
    assert cli.main(args) == 0  # second time: found, not regenerated
    assert "Phantom set already in" in caplog.text and "Writing" not in caplog.text


@pytest.mark.parametrize("extra, message", [
    (("--precision", "float61"), "argument --precision: invalid choice: 'float61'"),
    (("--epochs", "-1"), "argument --epochs: expected an integer >= 1, got -1"),
    (("--learning-rate", "0"), "argument --learning-rate: expected a finite number > 0, got 0"),
    (("--batch-size", "x"), "argument --batch-size: expected an integer >= 1, got 'x'"),
    (("--strategy", "gpu"), "argument --strategy: invalid choice: 'gpu'"),
])
def test_train_refuses_bad_options_before_anything_loads(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(_train_args("vae", tmp_path / "no-data", tmp_path / "out", *extra))
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_rejects_bad_models_and_settings(phantom_dir, tmp_path, capsys, caplog):
    with pytest.raises(SystemExit):
        cli.main(["train", "gan", "--data", str(phantom_dir)])
    assert "invalid choice: 'gan'" in capsys.readouterr().err
    assert cli.main(_train_args("vae", phantom_dir, tmp_path, "--set", "latent_dim")) == 1
    assert cli.main(_train_args("vae", phantom_dir, tmp_path, "--set", "beta=-1")) == 1
    assert "`beta` must be a finite number in [0, inf)" in caplog.text
    assert not (tmp_path / "history.csv").exists()  # refused before training started
    assert cli.main(["sample", "vae", "--model", str(tmp_path / "missing.keras")]) == 1


@pytest.mark.parametrize("model", ["vae", "diffusion"])
def test_conditional_train_and_sample_with_label_and_guidance(model, phantom_dir, tmp_path,
                                                              caplog, monkeypatch):
    assert cli.main(_train_args(model, phantom_dir, tmp_path, "--set", "num_classes=3",
                                "--samples", "3", "--sample-steps", "2", "--epochs", "1",
                                # EMA = online weights: after 3 steps the EMA barely moved
                                *(["--set", "ema_decay=0"] if model == "diffusion" else []))) == 0
    saved = tmp_path / f"{model}.keras"
    if model == "vae":  # training ends by fitting the class prior, saved with the model
        assert keras.models.load_model(saved).has_fitted_prior
    cls = model_class(model)
    generate, received = cls.generate, []

    def spy(self, n, **kwargs):  # the real generate, recording the options it received
        received.append(kwargs)
        return generate(self, n, **kwargs)

    monkeypatch.setattr(cls, "generate", spy)
    grids = {}
    for label in ("normal", "2"):
        out = tmp_path / f"{label}.png"
        args = ["sample", model, "--model", str(saved), "-n", "2", "--seed", "1",
                "--label", label, "--out", str(out)]
        if model == "diffusion":
            args += ["--steps", "3", "--guidance", "3.0"]
        assert cli.main(args) == 0
        grids[label] = np.asarray(Image.open(out), dtype=float)
    assert [options["label"] for options in received] == ["normal", 2]  # an index: an int
    if model == "diffusion":  # after one epoch the VAE's label moves pixels < 1/255 (PNG)
        assert not np.array_equal(grids["normal"], grids["2"])
        assert [options["guidance"] for options in received] == [3.0, 3.0]
    caplog.clear()
    if model == "vae":  # guidance is a diffusion option: refused with the model's message
        assert cli.main(["sample", "vae", "--model", str(saved), "--label", "benign",
                         "--guidance", "3", "--out", str(tmp_path / "x.png")]) == 1
        assert "--guidance does not apply to the vae model (it takes --label)" in caplog.text
    else:
        assert cli.main(["sample", model, "--model", str(saved), "--steps", "2",
                         "--label", "cancer", "--out", str(tmp_path / "x.png")]) == 1
        assert "`label` must be" in caplog.text


# -- lungkit train distill ---------------------------------------------------------------------
DISTILL_SIZE = 8


def _tiny_diffusion(**kwargs):
    from lungkit.models.diffusion import DiffusionModel

    return DiffusionModel(image_size=DISTILL_SIZE, channels=1, widths=(8,), blocks_per_level=1,
                          timesteps=20, seed=0, **kwargs)


@pytest.fixture(scope="module")
def teacher_run(phantom_dir, tmp_path_factory):
    """A conditional 8 px v-prediction DDPM trained 1 epoch by `lungkit.training`: its run
    folder (teacher.keras beside teacher.run.json)."""
    from lungkit import training
    from lungkit.data.images import load_data
    from lungkit.data.pipeline import make_dataset

    keras.utils.set_random_seed(0)
    model = _tiny_diffusion(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    images, labels = load_data(phantom_dir, size=DISTILL_SIZE)
    data = make_dataset(images, labels, batch_size=4, image_size=DISTILL_SIZE, channels=1,
                        with_labels=True)
    out = tmp_path_factory.mktemp("teacher")
    training.fit(model, data, 1, out, name="teacher", verbose=0, tensorboard=False)
    return out


def test_train_distill_saves_a_student_that_samples_its_trained_steps(teacher_run, phantom_dir,
                                                                       tmp_path, capsys, caplog):
    out = tmp_path / "student"
    # 6 images, batch 4: 2 batches an epoch; 2 epochs = 4 updates, 2 per round (4 -> 2 -> 1)
    assert cli.main(["train", "distill", "--teacher", str(teacher_run), "--data",
                     str(phantom_dir), "--limit", "2", "--epochs", "2", "--batch-size", "4",
                     "--steps", "1", "--set", "start_steps=4", "--samples", "3",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "distill.keras (2 epochs; loss" in printed
    assert "Trained step counts: 2, 1 (lungkit sample distill" in printed
    assert {"distill.keras", "history.csv", "curves.png", "samples.png"} <= \
        {p.name for p in out.iterdir()}
    assert all(np.isfinite(read_history(out / "history.csv")["loss"]))
    student = keras.models.load_model(out / "distill.keras")
    assert student.rounds == (2, 1) and student.round_updates == 2
    assert student.trained_steps == (2, 1) and int(student.optimizer.iterations) == 4

    grid = tmp_path / "grid.png"
    # the kept 2-step student (samples.png came from the 1-step one)
    assert cli.main(["sample", "distill", "--model", str(out / "distill.keras"), "-n", "2",
                     "--steps", "2", "--label", "benign", "--guidance", "2",
                     "--out", str(grid)]) == 0
    assert Image.open(grid).size[0] > DISTILL_SIZE
    caplog.clear()
    assert cli.main(["sample", "distill", "--model", str(out / "distill.keras"),
                     "--steps", "4", "--out", str(grid)]) == 1
    assert "`steps` must be one of this student's trained step counts (2, 1)" in caplog.text
    assert cli.main(["sample", "distill", "--model", str(out / "distill.keras"),
                     "--sampler", "ddpm", "--out", str(grid)]) == 1
    assert "--sampler does not apply to the distill model" in caplog.text


@pytest.mark.parametrize("teacher, expected", [
    ("vae", "must be a lungkit DiffusionModel.*Received: a VAE"),
    ("epsilon", r"must predict v.*prediction='epsilon'"),
    ("missing", "--teacher file not found"),
])
def test_train_distill_refuses_a_teacher_that_cannot_teach(teacher, expected, tmp_path, caplog,
                                                          monkeypatch):
    import re

    from lungkit.models.vae import VAE

    path = tmp_path / f"{teacher}.keras"
    if teacher == "vae":
        VAE(image_size=32, channels=1, widths=(8,), latent_dim=4,
            dense_units=0).save(path)
    elif teacher == "epsilon":
        _tiny_diffusion(prediction="epsilon").save(path)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # no --data: refused first, no phantom set is made in data/
    assert cli.main(["train", "distill", "--teacher", str(path), "--out", str(out)]) == 1
    assert re.search(expected, caplog.text) and str(path) in caplog.text
    assert not out.exists() and not (tmp_path / "data").exists()


def test_distill_options_are_refused_for_other_models(tmp_path, caplog):
    assert cli.main(_train_args("vae", tmp_path / "no-data", tmp_path / "out", "--teacher",
                                str(tmp_path / "t.keras"))) == 1
    assert "--teacher applies to `lungkit train distill` only" in caplog.text
    assert not (tmp_path / "out").exists()
