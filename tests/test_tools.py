"""lungkit.tools: one home for the repository address, and the notebooks' install cell.

The install-cell tests run the cell's code as Colab would (a fake `google.colab` package on
PYTHONPATH, its `drive.mount` recording calls) in a throwaway virtual environment, against a
local git repository tagged v<version>, a `git archive` zip on a fake Drive, a checkout
folder, and every way failing. The environment is `venv --without-pip` plus a `.pth` file
naming links to this interpreter's pip and setuptools: fast (no pip bootstrap), offline
(`--no-deps`, no index, no build isolation) and blind to this environment's own lungkit.
(`--system-site-packages` would not do: from inside a venv it exposes the base interpreter's
packages, not this environment's.)
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

import lungkit
from lungkit import tools

ROOT = Path(__file__).resolve().parents[1]
NEW_SLUG = "my-lab/lungkit-fork"


@pytest.fixture
def checkout(tmp_path):
    """A copy of the files set-repo rewrites (pyproject, README, notebooks)."""
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, root / name)
    for path in tools.notebook_paths(ROOT):
        shutil.copy(path, root / "notebooks" / path.name)
    return root


def snapshot(root):
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file()}


# -- the repository address -----------------------------------------------------------------

def test_the_checkout_agrees_with_pyproject():
    tomllib = pytest.importorskip("tomllib")
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert tools.read_repository(ROOT) == urls["Repository"]  # the regex reads the TOML value
    assert len(tools.notebook_paths(ROOT)) == 4
    assert tools.check(ROOT) == []


def test_check_names_what_drifted(checkout):
    assert tools.check(checkout) == []
    readme = checkout / "README.md"
    readme.write_text(readme.read_text().replace(
        "github/lungkit/lungkit/blob/main/notebooks/02_vae", "github/someone/else/blob/main/"
        "notebooks/02_vae", 1))
    notebook = checkout / "notebooks" / "03_diffusion.ipynb"
    notebook.write_text(notebook.read_text().replace('LUNGKIT_VERSION = \\"', 'X = \\"', 1))
    problems = tools.check(checkout)
    assert "README.md has Colab badges for someone/else, pyproject.toml names lungkit/lungkit" \
        in problems
    assert any("README.md has no Colab badge" in p and "02_vae" in p for p in problems)
    assert any(p.startswith("03_diffusion.ipynb: its install cell differs") for p in problems)
    assert len(problems) == 3


def test_set_repo_rewrites_every_address_and_back(checkout):
    before = snapshot(checkout)
    changed = tools.set_repo(NEW_SLUG, checkout)
    assert sorted(p.name for p in changed) == sorted(
        ["pyproject.toml", "README.md", "01_data.ipynb", "02_vae.ipynb", "03_diffusion.ipynb",
         "04_compare.ipynb"])
    assert tools.read_repository(checkout) == f"https://github.com/{NEW_SLUG}"
    assert tools.check(checkout) == []
    for path in changed:
        assert "lungkit/lungkit" not in path.read_text(), path
    nbformat = pytest.importorskip("nbformat")
    for path in tools.notebook_paths(checkout):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        install = [cell for cell in notebook.cells if cell.cell_type == "code"][0]
        assert f'LUNGKIT_REPO = "https://github.com/{NEW_SLUG}"' in install.source
    assert tools.set_repo(NEW_SLUG, checkout) == []  # nothing left to change
    tools.set_repo("https://github.com/lungkit/lungkit.git", checkout)
    assert snapshot(checkout) == before  # byte for byte, and no temporary files left


def test_set_repo_command(checkout, capsys):
    assert tools.main(["--root", str(checkout), "set-repo", NEW_SLUG]) == 0
    out = capsys.readouterr().out
    assert f"https://github.com/{NEW_SLUG}: 6 files changed" in out
    assert tools.main(["--root", str(checkout), "check"]) == 0
    assert tools.main(["--root", str(checkout), "set-repo", "not a repo"]) == 1
    assert "Received: 'not a repo'" in capsys.readouterr().err
    (checkout / "notebooks" / "01_data.ipynb").write_text(
        (ROOT / "notebooks" / "01_data.ipynb").read_text())
    assert tools.main(["--root", str(checkout), "check"]) == 1
    assert "01_data.ipynb" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tools.main(["--root", str(checkout / "notebooks"), "check"])
    assert "--root must be a lungkit checkout" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["lungkit", "a/b/c", "https://gitlab.com/a/b", "-x/y", ""])
def test_slug_of_refuses_what_is_not_owner_name(bad):
    with pytest.raises(ValueError, match="Expected a GitHub repository as OWNER/NAME"):
        tools.slug_of(bad)


# -- the install cell, run as in Colab ----------------------------------------------------------

@pytest.fixture(scope="module")
def pip_links(tmp_path_factory):
    """A folder of links to this interpreter's pip and setuptools (with their metadata)."""
    import setuptools

    if Version(setuptools.__version__) < Version("77"):
        pytest.fail(f"the install-cell tests build lungkit without build isolation and need "
                    f"setuptools>=77 (pyproject's build backend; the `test` extra installs "
                    f"it). Received: setuptools {setuptools.__version__}")
    links = tmp_path_factory.mktemp("pip_links")
    site = Path(sysconfig.get_paths()["purelib"])
    # setuptools registers its commands (dist_info, bdist_wheel) through its entry points,
    # so the .dist-info folders come along
    version = {package: metadata.version(package) for package in ("pip", "setuptools")}
    for name in ("pip", "setuptools", "_distutils_hack", f"pip-{version['pip']}.dist-info",
                 f"setuptools-{version['setuptools']}.dist-info"):
        (links / name).symlink_to(site / name)
    return links


@pytest.fixture(scope="module")
def fake_colab(tmp_path_factory):
    """A `google.colab` package whose `drive.mount` appends its mount point to $MOUNT_LOG."""
    root = tmp_path_factory.mktemp("fake_colab")
    package = root / "google" / "colab"
    package.mkdir(parents=True)
    (root / "google" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "drive.py").write_text(
        "import os\n\n\ndef mount(mountpoint, force_remount=False):\n"
        "    with open(os.environ['MOUNT_LOG'], 'a') as log:\n"
        "        log.write(mountpoint + '\\n')\n")
    return root


@pytest.fixture(scope="module")
def source_repo(tmp_path_factory):
    """A git repository of this checkout's package files, tagged v<version>, and its zip."""
    work = tmp_path_factory.mktemp("lungkit_source")
    repo = work / "lungkit"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "lungkit", repo / "lungkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "lungkit"],
                    ["tag", f"v{lungkit.__version__}"]):
        subprocess.run(git + command, check=True, capture_output=True)
    zip_path = work / "lungkit-main.zip"
    subprocess.run(git + ["archive", "--format=zip", "--prefix=lungkit-main/", "-o",
                          str(zip_path), f"v{lungkit.__version__}"], check=True)
    return repo, zip_path


def run_cell(cell, tmp_path, fake_colab, pip_links, colab=True):
    """Runs `cell` in a new venv (as Colab's kernel would); returns (process, mounts, url)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    (Path(site.stdout.strip()) / "pip_links.pth").write_text(f"{pip_links}\n")
    script = tmp_path / "cell.py"
    script.write_text(("import google.colab\n" if colab else "") + cell + "\n")
    mount_log = tmp_path / "mounts.txt"
    env = {**os.environ, "PYTHONPATH": str(fake_colab), "MOUNT_LOG": str(mount_log),
           "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           # pip stores this variable's value in its `build_isolation` option: "0" turns
           # build isolation off (so no build backend is downloaded)
           "PIP_NO_BUILD_ISOLATION": "0"}
    process = subprocess.run([python, str(script)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120)
    mounts = mount_log.read_text().splitlines() if mount_log.exists() else []
    installed = subprocess.run(
        [python, "-c", "from importlib import metadata\n"
         "try:\n    print(metadata.distribution('lungkit').read_text('direct_url.json'))\n"
         "except metadata.PackageNotFoundError:\n    print('null')"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path)  # not the checkout: its lungkit.egg-info would answer for lungkit
    return process, mounts, json.loads(installed.stdout)


def with_source(cell, source):
    line = "LUNGKIT_SOURCE = None  #"
    assert cell.count(line) == 1
    return cell.replace(line, f"LUNGKIT_SOURCE = {str(source)!r}  #")


def test_install_cell_installs_the_tag_of_this_version(source_repo, fake_colab, pip_links,
                                                        tmp_path):
    repo, _ = source_repo
    cell = tools.install_cell(repo.as_uri())
    process, mounts, installed = run_cell(cell, tmp_path, fake_colab, pip_links)
    assert process.returncode == 0, process.stderr
    assert process.stdout == "" and mounts == []
    assert installed["url"] == repo.as_uri()
    assert installed["vcs_info"]["requested_revision"] == f"v{lungkit.__version__}"


def test_install_cell_mounts_drive_and_installs_a_zip_there(source_repo, fake_colab,
                                                            pip_links, tmp_path):
    _, zip_path = source_repo
    drive = tmp_path / "drive"
    (drive / "MyDrive").mkdir(parents=True)
    shutil.copy(zip_path, drive / "MyDrive" / "lungkit-main.zip")
    cell = tools.install_cell("file:///no/such/repository", drive=str(drive))
    cell = with_source(cell, drive / "MyDrive" / "lungkit-main.zip")
    process, mounts, installed = run_cell(cell, tmp_path, fake_colab, pip_links)
    assert process.returncode == 0, process.stderr
    assert mounts == [str(drive)]  # mounted before installing
    assert installed["url"] == (drive / "MyDrive" / "lungkit-main.zip").resolve().as_uri()
    assert "archive_info" in installed


def test_install_cell_installs_a_checkout_folder(source_repo, fake_colab, pip_links, tmp_path):
    repo, _ = source_repo
    checkout = shutil.copytree(repo, tmp_path / "checkout")  # pip builds in the folder
    cell = with_source(tools.install_cell("file:///no/such/repository"), checkout)
    process, mounts, installed = run_cell(cell, tmp_path, fake_colab, pip_links)
    assert process.returncode == 0, process.stderr
    assert mounts == []  # not under the Drive mount point
    assert installed == {"dir_info": {}, "url": checkout.resolve().as_uri()}


def test_install_cell_names_three_ways_when_every_way_fails(fake_colab, pip_links, tmp_path):
    drive = tmp_path / "drive"
    missing = drive / "MyDrive" / "lungkit-main.zip"
    cell = tools.install_cell((tmp_path / "no-repository").as_uri(), drive=str(drive))
    process, mounts, installed = run_cell(with_source(cell, missing), tmp_path, fake_colab,
                                          pip_links)
    assert process.returncode == 1 and installed is None
    assert mounts == [str(drive)]
    lines = process.stdout.splitlines()
    assert lines[0] == "lungkit could not be installed. Tried:"
    assert lines[1].startswith(f"  {missing.resolve().as_uri()}: ERROR: ")
    assert lines[2].startswith(f"  git+{(tmp_path / 'no-repository').as_uri()}@v"
                               f"{lungkit.__version__}: fatal: ")
    assert lines[3] == "Three ways that work:"
    text = process.stdout
    assert "LUNGKIT_SOURCE" in text and "set-repo OWNER/NAME" in text
    assert '%pip install "lungkit[colab] @ file:///content/lungkit-main.zip"' in text
    assert len(lines) <= 12
    assert process.stderr.strip() == "lungkit is not installed: see the three ways above."
    assert "Traceback" not in process.stderr and "CalledProcessError" not in process.stderr


def test_install_cell_does_nothing_outside_colab(source_repo, fake_colab, pip_links, tmp_path):
    repo, _ = source_repo
    cell = with_source(tools.install_cell(repo.as_uri()), repo)
    process, mounts, installed = run_cell(cell, tmp_path, fake_colab, pip_links, colab=False)
    assert process.returncode == 0 and process.stdout == "" and process.stderr == ""
    assert mounts == [] and installed is None
