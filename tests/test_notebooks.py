"""The four Colab notebooks: committed clean and thin, and executed headless on the phantom set.

Static checks read the committed `.ipynb` files: no outputs or execution counts, exactly one
papermill `parameters` cell holding plain values, an "Open in Colab" badge, an install cell
that does something only in Colab, and no `def` / `class` (model code lives in lungkit).

The execution tests run each notebook with papermill and tiny parameters (32 px, one channel,
one or two epochs, four phantom slices per class) in a temporary folder, check that every
cell ran and that the expected figures and files exist, and record the wall time of each run
in `runs/notebook_test_times.json` (and print it: `pytest -s tests/test_notebooks.py`).
"""

import ast
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_data", "02_vae", "03_diffusion", "04_compare")
COLAB_URL = "https://colab.research.google.com/github/{}/blob/main/notebooks/{}.ipynb"
TIMES_FILE = Path(__file__).resolve().parents[1] / "runs" / "notebook_test_times.json"

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
            "image_size": 32, "channels": 1, "phantom_per_class": 4, "n_generate": 4,
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
    assert f"]({COLAB_URL.format('lungkit/lungkit', name)})" in notebook.cells[0].source
    install, *rest = [cell.source for cell in code_cells(notebook)]
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
