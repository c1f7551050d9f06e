"""The package as installed: imports, its dependencies and what Colab pins."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_imports():
    import lungkit

    assert lungkit.__version__


# -- dependencies: Colab's packages stay, TensorFlow comes from an extra or the platform ------

def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(lines):
    from packaging.requirements import Requirement

    return [Requirement(line) for line in lines]


def test_colabs_pinned_versions_satisfy_every_requirement_of_lungkit():
    """Installing lungkit[colab] in Colab keeps Colab's TensorFlow, Keras, numpy, ipywidgets 7
    (tqdm bars stay visible), ...: each requirement accepts the version Colab pins."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "notebooks" / "colab_versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    assert {"tensorflow", "keras", "numpy", "ipywidgets", "tqdm"} <= set(pins)
    project = _pyproject()
    requirements = _requirements(project["dependencies"]
                                 + project["optional-dependencies"]["colab"])
    checked = [r for r in requirements if canonicalize_name(r.name) in pins]
    assert len(checked) >= 8  # keras, numpy, scipy, pillow, tqdm, matplotlib, gdown, ipywidgets
    for requirement in checked:
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement} would replace Colab's {requirement.name}=={version}")
    assert "papermill" not in {r.name for r in requirements}  # tests only, not Colab


def test_requirements_txt_mirrors_the_dependencies_without_tensorflow_keras_numpy():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    names = {requirement.name.lower() for requirement in _requirements(lines)}
    platform = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "keras", "numpy"}
    assert not names & platform, f"requirements.txt must leave {names & platform} to the platform"
    dependencies = {str(r) for r in _requirements(_pyproject()["dependencies"])
                    if r.name.lower() not in platform}
    assert {str(r) for r in _requirements(lines)} == dependencies


def test_tensorflow_extras_bring_tensorboard():
    extras = _pyproject()["optional-dependencies"]
    for extra in ("cpu", "gpu"):
        names = {r.name for r in _requirements(extras[extra])}
        assert "tensorboard" in names and names & {"tensorflow", "tensorflow-cpu"}, extra


def test_without_tensorflow_lungkit_imports_and_names_the_extras(tmp_path):
    """`pip install lungkit` alone: the data tools work, the TensorFlow parts say what to
    install (checked in a fresh interpreter where `import tensorflow` fails)."""
    import json
    import subprocess
    import sys

    code = f"""
import importlib, json, sys
sys.modules["tensorflow"] = None
import lungkit
from lungkit.cli import main
from lungkit.data.images import load_data
from lungkit.experiment import get_config
from lungkit.models.registry import MODELS, model_spec
assert main(["data", "phantom", "--out", {str(tmp_path / "phantom")!r}, "--per-class", "1",
             "--size", "32"]) == 0
images, labels = load_data({str(tmp_path / "phantom")!r}, size=16)
errors = {{}}
import lungkit.evaluation.statistics  # numpy only: the claims need no TensorFlow
for name in ("lungkit.models.vae", "lungkit.models.diffusion", "lungkit.training",
             "lungkit.evaluation.metrics", "lungkit.data.pipeline"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        errors[name] = str(error)
for name in ("VAE", "DiffusionModel", "evaluate", "make_dataset"):
    try:
        getattr(lungkit, name)
    except ImportError as error:
        errors["lungkit." + name] = str(error)
try:
    lungkit.load_model("model.keras")  # importable without TensorFlow, needs it to load
except ImportError as error:
    errors["lungkit.load_model"] = str(error)
print(json.dumps({{"images": len(images), "errors": errors}}))
"""
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout.splitlines()[-1])
    assert result["images"] == 3

    expected = ["lungkit.models.vae", "lungkit.models.diffusion", "lungkit.training",
                "lungkit.evaluation.metrics", "lungkit.data.pipeline", "lungkit.VAE", "lungkit.DiffusionModel", "lungkit.evaluate",
                "lungkit.make_dataset", "lungkit.load_model"]
    assert sorted(result["errors"]) == sorted(expected)
    for message in result["errors"].values():
        assert "needs TensorFlow, which is not installed" in message
        assert 'pip install "lungkit[cpu]"' in message and '"lungkit[gpu]"' in message
