"""The four Colab notebooks: committed clean and thin, and executed headless on the phantom set;
and `lungkit.notebooks`, which turns their `RUN` parameter into settings.

Static checks read the committed `.ipynb` files: no outputs or execution counts, exactly one
papermill `parameters` cell holding plain values, an "Open in Colab" badge and the install
cell of `lungkit.tools`, a settings cell that resolves every parameter the run sets, the
TensorBoard cell (Colab only), and no `def` / `class` (model code lives in lungkit).

The execution tests run each notebook with papermill and tiny parameters (32 px, one channel,
one or two epochs, four phantom slices per class) in a temporary folder, check that every
cell ran and that the expected figures and files exist, and record the wall time of each run
in `runs/notebook_test_times.json` (and print it: `pytest -s tests/test_notebooks.py`).
"""

import ast
import importlib.machinery
import json
import re
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest

from lungkit import notebooks, tools

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NAMES = ("01_data", "02_vae", "03_diffusion", "04_compare")
WITH_RUN = ("02_vae", "03_diffusion", "04_compare")  # the notebooks with a RUN parameter
TIMES_FILE = ROOT / "runs" / "notebook_test_times.json"

TINY_DATA = {"IMAGE_SIZE": 32, "CHANNELS": 1, "PHANTOM_PER_CLASS": 4}
# name -> (papermill parameters besides OUT_DIR, files expected under OUT_DIR)
RUNS = {
    "01_data": (
        {**TINY_DATA, "N_PER_CLASS_SHOWN": 3},
        ["figures/fig1_real_per_class.png", "figures/class_counts.png",
         "figures/load_image.png", "figures/intensity_histogram.png"],
    ),
    "02_vae": (
        {**TINY_DATA, "EPOCHS": 2, "BATCH_SIZE": 4, "LATENT_DIM": 8, "WIDTHS": [8, 16],
         "N_SAMPLES": 4},
        ["figures/fig2_vae_samples.png", "figures/fig4_vae_curves.png",
         "figures/vae_reconstructions.png", "vae/vae.keras", "vae/history.csv"],
    ),
    "03_diffusion": (
        {**TINY_DATA, "BATCH_SIZE": 4, "N_SAMPLES": 4, "DENOISER_EPOCHS": 1,
         "DENOISER_WIDTHS": [8, 16], "DIFFUSION_EPOCHS": 1, "DIFFUSION_WIDTHS": [8, 16],
         "TIMESTEPS": 50, "SAMPLING_STEPS": 5, "DDPM_IMAGES": 1},
        ["figures/fig5_denoiser_curve.png", "figures/fig3_denoiser_samples.png",
         "figures/forward_process.png", "figures/ddpm_curve.png",
         "figures/fig3_side_by_side.png", "denoiser/denoiser.keras",
         "diffusion/diffusion.keras"],
    ),
    "04_compare": (
        {"OVERRIDES": {
            "models": ["vae", "denoiser", "diffusion"], "image_size": 32, "channels": 1,
            "phantom_per_class": 6, "test_fraction": 0.34, "n_generate": 4,
            "features": "domain", "vae.epochs": 1, "vae.batch_size": 4, "vae.latent_dim": 8,
            "vae.widths": [8, 16], "denoiser.epochs": 1, "denoiser.batch_size": 4,
            "denoiser.widths": [8, 16], "diffusion.epochs": 1, "diffusion.batch_size": 4,
            "diffusion.widths": [8, 16], "diffusion.timesteps": 50,
            "diffusion.sampling_steps": 5, "diffusion.ddpm_timing_images": 1}},
        ["report.html", "report.md", "metrics.json", "figures/fig1_real_per_class.png",
         "figures/fig2_vae_samples.png", "figures/fig3_diffusion_samples.png"],
    ),
}


def load(name):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


# -- static checks on the committed notebooks ---------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_and_stripped(name):
    notebook = load(name)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in code_cells(notebook):
        assert cell.outputs == [], f"{name}: outputs must be cleared before committing"
        assert cell.execution_count is None, f"{name}: execution counts must be cleared"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_badge_install_and_drive_cells(name):
    notebook = load(name)
    assert notebook.cells[0].cell_type == "markdown"
    repository = tools.read_repository(ROOT)
    badge = tools.COLAB_BADGE_URL.format(slug=tools.slug_of(repository), name=name)
    assert f"]({badge})" in notebook.cells[0].source
    install, *rest = [cell.source for cell in code_cells(notebook)]
    assert install == tools.install_cell(repository)  # `python -m lungkit.tools set-repo`
    assert 'if "google.colab" in sys.modules:' in install  # does nothing outside Colab
    assert len(re.findall(r"^LUNGKIT_REPO = \"https://github.com/", install, re.M)) == 1
    sources = "\n".join(rest)
    assert "LUNGKIT_REPO" not in sources and "github.com" not in sources  # one URL constant
    assert "mount_drive() if USE_DRIVE and in_colab() else None" in sources


@pytest.mark.parametrize("name", NAMES)
def test_one_parameters_cell_with_plain_values(name):
    notebook = load(name)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters'"
    assert tagged[0].cell_type == "code"
    assert tagged[0] is code_cells(notebook)[1]  # right after the install cell
    tree = ast.parse(tagged[0].source)
    names = []
    for statement in tree.body:
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        ast.literal_eval(statement.value)  # plain values only
        names += [target.id for target in statement.targets]
    assert {"DATA_DIR", "DATA_SOURCE", "OUT_DIR", "USE_DRIVE"} <= set(names)
    assert set(RUNS[name][0]) <= set(names)  # the test's parameters all exist
    import papermill  # papermill reads every one of them (a line it cannot parse it skips)

    assert list(papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))) == names
    if name in WITH_RUN:
        assert "RUN" in names


FROM_RUN = re.compile(r"^(\w+) = None  # .*None: from RUN \(quick (\[[^\]]*\]|[^,]+), "
                      r"paper (\[[^\]]*\]|[^)]+)\)", re.M)


@pytest.mark.parametrize("name", WITH_RUN)
def test_settings_cell_resolves_every_setting_of_the_run(name):
    """The parameters the run sets are None (with both runs' values, as in lungkit.notebooks,
    in their comments), and the next cell passes each to run_settings and takes it back."""
    parameters, settings_cell = (cell.source for cell in code_cells(load(name))[1:3])
    expected = notebooks.SETTINGS[name]
    commented = {match[0]: (ast.literal_eval(match[1]), ast.literal_eval(match[2]))
                 for match in FROM_RUN.findall(parameters)}
    assert commented == {key: (expected["quick"][key], expected["paper"][key])
                         for key in expected["quick"]}
    assert re.search(r'^RUN = "auto"  #', parameters, re.M)
    tree = ast.parse(settings_cell)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "run_settings"]
    assert len(calls) == 1
    call = calls[0]
    assert [ast.literal_eval(call.args[0]), call.args[1].id] == [name, "RUN"]
    assert {kw.arg: kw.value.id for kw in call.keywords} == {key: key for key in expected["quick"]}
    assigned = {target.id for node in tree.body if isinstance(node, ast.Assign)
                for each in node.targets
                for target in (each.elts if isinstance(each, ast.Tuple) else [each])}
    assert set(expected["quick"]) <= assigned
    assert "print(description)" in settings_cell


@pytest.mark.parametrize("name", ["02_vae", "03_diffusion"])
def test_tensorboard_shows_the_training_in_colab_only(name):
    sources = [cell.source for cell in code_cells(load(name))]
    tensorboard = [source for source in sources if '"load_ext", "tensorboard"' in source]
    assert len(tensorboard) == 1
    assert tensorboard[0].startswith("if in_colab():")
    assert 'run_line_magic("tensorboard", f\'--logdir "{OUT_DIR}"\')' in tensorboard[0]
    index = sources.index(tensorboard[0])
    assert "OUT_DIR = Path(" in sources[index - 1]  # after OUT_DIR is known
    assert any("training.fit" in source for source in sources[index:])  # before training


@pytest.mark.parametrize("name", NAMES)
def test_notebook_holds_no_model_code(name):
    for cell in code_cells(load(name)):
        tree = ast.parse(cell.source)  # every code cell is plain Python (no magics)
        defined = [node for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                        ast.Lambda))]
        assert not defined, f"{name}: define functions and classes in lungkit, not here"
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {
            node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module}
        assert "tensorflow" not in imported, f"{name}: notebooks use lungkit and keras only"


# -- lungkit.notebooks.run_settings ---------------------------------------------------------

def test_auto_runs_the_papers_settings_with_a_gpu():
    settings, description = notebooks.run_settings("02_vae", gpu="Tesla T4")
    assert settings == {"PHANTOM_PER_CLASS": 400, "IMAGE_SIZE": 128, "CHANNELS": 3,
                        "EPOCHS": 200, "BATCH_SIZE": 32}
    assert description == ("GPU found (Tesla T4): the paper's run: 128 px, 3 channels, VAE 200 "
                           "epochs. RUN = 'quick' runs the CPU settings.")
    settings, _ = notebooks.run_settings("03_diffusion", gpu=True)
    assert (settings["IMAGE_SIZE"], settings["CHANNELS"]) == (128, 3)
    assert settings["DIFFUSION_EPOCHS"] == notebooks.PAPER_DDPM_EPOCHS
    assert settings["DIFFUSION_WIDTHS"] == [32, 64, 96, 128]
    assert notebooks.run_settings("04_compare", gpu=True)[0] == {"PRESET": "paper"}


def test_auto_runs_the_quick_settings_without_a_gpu():
    settings, description = notebooks.run_settings("02_vae", gpu=False)
    assert settings == notebooks.SETTINGS["02_vae"]["quick"]
    assert (settings["IMAGE_SIZE"], settings["CHANNELS"], settings["EPOCHS"]) == (64, 1, 30)
    assert description.startswith("No GPU: the quick CPU run: 64 px, 1 channel, VAE 30 epochs.")
    assert "RUN = 'paper'" in description
    assert notebooks.run_settings("04_compare", gpu=False)[0] == {"PRESET": "quick"}


def test_auto_asks_tensorflow_for_the_gpu(monkeypatch):
    gpu = types.SimpleNamespace(name="/physical_device:GPU:0")
    fake = types.ModuleType("tensorflow")
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
    fake.config = types.SimpleNamespace(
        list_physical_devices=lambda kind: [gpu] if kind == "GPU" else [],
        experimental=types.SimpleNamespace(get_device_details=lambda d: {"device_name": "T4"}))
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    assert notebooks.find_gpu() == "T4"
    assert notebooks.run_settings("02_vae")[1].startswith("GPU found (T4): the paper's run")
    fake.config.list_physical_devices = lambda kind: []
    assert notebooks.find_gpu() is None
    assert notebooks.run_settings("02_vae")[0]["IMAGE_SIZE"] == 64


@pytest.mark.parametrize("gpu", [True, False])
def test_values_given_win_over_the_run(gpu):
    settings, description = notebooks.run_settings(
        "03_diffusion", gpu=gpu, IMAGE_SIZE=48, DIFFUSION_EPOCHS=3, CHANNELS=None)
    run = notebooks.SETTINGS["03_diffusion"]["paper" if gpu else "quick"]
    assert settings == {**run, "IMAGE_SIZE": 48, "DIFFUSION_EPOCHS": 3}
    assert "48 px" in description and "DDPM 3 epochs" in description
    assert "Given: IMAGE_SIZE=48, DIFFUSION_EPOCHS=3." in description
    assert notebooks.run_settings("04_compare", gpu=gpu, PRESET="classes")[0] == {
        "PRESET": "classes"}


def test_an_explicit_run_ignores_the_hardware():
    for gpu in (True, False):
        settings, description = notebooks.run_settings("02_vae", "quick", gpu=gpu)
        assert settings["IMAGE_SIZE"] == 64 and description.startswith("RUN = 'quick': ")
        settings, description = notebooks.run_settings("02_vae", "paper", gpu=gpu)
        assert settings["IMAGE_SIZE"] == 128 and description.startswith("RUN = 'paper': ")


def test_run_settings_names_what_it_accepts():
    with pytest.raises(ValueError, match=r"`run` must be one of \('auto', 'quick', 'paper'\)\. "
                                         r"Received: run='fast'"):
        notebooks.run_settings("02_vae", "fast", gpu=False)
    with pytest.raises(ValueError, match=r"02_vae takes .*'EPOCHS'.* Received: \['EPOCH'\]"):
        notebooks.run_settings("02_vae", gpu=False, EPOCH=3)
    with pytest.raises(ValueError, match="`notebook` must be one of .* Received: notebook='01'"):
        notebooks.run_settings("01", gpu=False)
    with pytest.raises(ValueError, match="`PRESET` must be one of .* Received: PRESET='big'"):
        notebooks.run_settings("04_compare", gpu=False, PRESET="big")


# -- headless execution -------------------------------------------------------------------

@pytest.fixture(scope="module")
def python3_kernel(tmp_path_factory):
    """A `python3` kernelspec that runs this interpreter, first on JUPYTER_PATH.

    jupyter_client maps a spec's `python` to sys.executable, but a user-level `python3` spec
    (~/.local/share/jupyter) could name another interpreter; this one wins over both.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (lungkit tests)", "language": "python"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec("python3")
        assert spec.argv[0] == sys.executable
        yield "python3"


def _record_time(name, seconds):
    times = {}
    if TIMES_FILE.exists():
        try:
            times = json.loads(TIMES_FILE.read_text())
        except ValueError:
            times = {}
    times[name] = round(seconds, 1)
    TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMES_FILE.write_text(json.dumps(times, indent=1) + "\n")
    print(f"\n{name}.ipynb executed in {seconds:.1f} s")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless_on_the_phantom_set(name, python3_kernel, tmp_path):
    import papermill

    parameters, expected = RUNS[name]
    out_dir = tmp_path / "out"
    executed_path = tmp_path / f"{name}.ipynb"
    start = time.perf_counter()
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / f"{name}.ipynb"), str(executed_path),
        parameters={**parameters, "OUT_DIR": str(out_dir)}, kernel_name=python3_kernel,
        cwd=str(tmp_path), progress_bar=False, log_output=False, execution_timeout=300)
    _record_time(name, time.perf_counter() - start)

    executed = nbformat.read(executed_path, as_version=4)
    cells = code_cells(executed)
    assert "injected-parameters" in cells[2].metadata.get("tags", [])
    if name in WITH_RUN:  # the settings cell says which run this is (no GPU here: quick)
        first_line = cells[3].outputs[0]["text"].splitlines()[0]
        assert first_line.startswith(("No GPU: the quick CPU run: ", "GPU found")), first_line
    for cell in cells:
        assert cell.execution_count is not None, f"{name}: a cell did not run:\n{cell.source}"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    images = sum("image/png" in output.get("data", {}) for cell in cells for output in cell.outputs)
    assert images >= 2, f"{name}: figures should show inline ({images} found)"
    for relative in expected:
        path = out_dir / relative
        assert path.is_file() and path.stat().st_size > 0, f"{name}: missing {relative}"
    assert not (tmp_path / "runs" / "notebooks").exists()  # OUT_DIR was honoured
