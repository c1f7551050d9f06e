"""Repository chores: the one home of the repository address, and the notebooks' install cell.

`pyproject.toml`'s `[project.urls] Repository` holds the address. The README's Colab badges,
each notebook's badge and each notebook's install cell are derived from it, and the install
cell is rendered from `INSTALL_CELL` here, so the four notebooks carry the same cell.

    python -m lungkit.tools set-repo OWNER/NAME   # point everything at a fork (run in a clone)
    python -m lungkit.tools check                 # list what disagrees with pyproject.toml

`set-repo` with the current OWNER/NAME re-renders the install cells (after a version change
or an edit of `INSTALL_CELL`). Standard library only, no TensorFlow and no nbformat, so it
runs in a bare clone; files are written to a temporary name and moved into place.
"""

import argparse
import json
import os
import re
import string
import sys
from pathlib import Path

from lungkit import __version__

GITHUB = "https://github.com/"
COLAB_BADGE_URL = "https://colab.research.google.com/github/{slug}/blob/main/notebooks/{name}.ipynb"
NOTEBOOK_GLOB = "notebooks/0*.ipynb"
# `Repository = "https://github.com/OWNER/NAME"` in [project.urls]; read with a regex rather
# than tomllib (Python 3.11+) because set-repo rewrites that line in place anyway.
REPOSITORY_LINE = re.compile(r'^(Repository[ \t]*=[ \t]*")([^"\n]*)(")[ \t]*$', re.MULTILINE)
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
# Where Colab mounts Google Drive (`google.colab.drive.mount`).
COLAB_DRIVE = "/content/drive"

# The first code cell of every notebook. Plain statements only (the notebook tests forbid
# def/class/lambda); `$repository`, `$version` and `$drive` are filled in by `install_cell`.
INSTALL_CELL = string.Template(r'''# Colab only: install lungkit, trying in order
#   1. LUNGKIT_SOURCE, if you set it: a lungkit checkout folder or a zip of the repository,
#      e.g. on your Drive (mounted first when the path is under $drive);
#   2. LUNGKIT_REPO at the tag of this notebook's version, v$version.
# Colab's own TensorFlow, Keras, numpy and ipywidgets stay as they are. Outside Colab this
# cell does nothing: install lungkit yourself (`pip install -e ".[cpu,test]"` in a clone).
# Written by `python -m lungkit.tools set-repo OWNER/NAME`, which points it at a fork.
import os
import subprocess
import sys
from pathlib import Path

LUNGKIT_SOURCE = None  # e.g. "$drive/MyDrive/lungkit-main.zip" or a checkout folder
LUNGKIT_REPO = "$repository"
LUNGKIT_VERSION = "$version"
if "google.colab" in sys.modules:
    sources = [f"git+{LUNGKIT_REPO}@v{LUNGKIT_VERSION}"]
    if LUNGKIT_SOURCE:
        if str(LUNGKIT_SOURCE).startswith("$drive/"):
            from google.colab import drive

            drive.mount("$drive")
        sources.insert(0, Path(LUNGKIT_SOURCE).expanduser().resolve().as_uri())
    failures = []
    for source in sources:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                              f"lungkit[colab] @ {source}"], capture_output=True, text=True,
                             env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})  # fail, not ask
        if pip.returncode == 0:
            break
        reasons = [line.strip() for line in pip.stderr.splitlines()
                   if line.strip().startswith(("fatal:", "error: pathspec", "ERROR:"))]
        failures.append(f"  {source}: {(reasons or [f'pip exit code {pip.returncode}'])[0]}")
    else:
        print("lungkit could not be installed. Tried:", *failures, "Three ways that work:",
              "  1. Put a lungkit checkout folder or the repository's zip (GitHub: Code >",
              "     Download ZIP) on your Drive, set LUNGKIT_SOURCE in this cell to its path,",
              '     e.g. "$drive/MyDrive/lungkit-main.zip", and run the cell again.',
              "  2. Fork the repository, run `python -m lungkit.tools set-repo OWNER/NAME` in",
              "     a clone, commit, `git push --tags`, and open the notebooks from the fork.",
              "  3. Upload the repository's zip to Colab (Files pane) and run",
              '     %pip install "lungkit[colab] @ file:///content/lungkit-main.zip"', sep="\n")
        raise SystemExit("lungkit is not installed: see the three ways above.")
''')


def install_cell(repository, version=__version__, drive=COLAB_DRIVE):
    """The notebooks' install cell (source text).

    Args:
        repository: the repository URL it installs from (`git+URL@v<version>`).
        version: the lungkit version whose tag it installs.
        drive: where Colab mounts Google Drive (a test points it at a folder of its own).
    """
    return INSTALL_CELL.substitute(repository=repository, version=version,
                                   drive=drive).rstrip("\n")


def read_repository(root="."):
    """The repository URL in `root/pyproject.toml`'s `[project.urls]` (`Repository = ...`)."""
    path = Path(root) / "pyproject.toml"
    matches = REPOSITORY_LINE.findall(path.read_text(encoding="utf-8"))
    if len(matches) != 1:
        raise ValueError(f"{path} must hold one `Repository = \"{GITHUB}OWNER/NAME\"` line "
                         f"under [project.urls]. Received: {len(matches)} such lines")
    return matches[0][1]


def slug_of(url):
    """`OWNER/NAME` of a GitHub address (`https://github.com/OWNER/NAME`, `.git` optional)."""
    slug = url.removeprefix(GITHUB).removesuffix("/").removesuffix(".git")
    if not SLUG.match(slug):
        raise ValueError(f"Expected a GitHub repository as OWNER/NAME or {GITHUB}OWNER/NAME, "
                         f"e.g. my-lab/lungkit. Received: {url!r}")
    return slug


def notebook_paths(root="."):
    """The Colab notebooks under `root`, in order (`notebooks/0*.ipynb`)."""
    return sorted(Path(root).glob(NOTEBOOK_GLOB))


def _cell_source(cell):
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def _set_cell_source(cell, text):
    cell["source"] = text.splitlines(keepends=True)  # how nbformat stores it


def _notebook_text(notebook):
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # nbformat's


def _write_atomic(path, text):
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _replace_slug(text, old, new):
    """`text` with every GitHub and Colab address of repository `old` pointing at `new`."""
    for prefix in (GITHUB, "https://colab.research.google.com/github/"):
        text = re.sub(re.escape(prefix + old) + r"(?![\w.-])", prefix + new, text)
    return text


def set_repo(slug, root="."):
    """Points `pyproject.toml`, the README and every notebook under `root` at repository `slug`.

    Rewrites the `[project.urls]` address, the README's and the notebooks' GitHub and Colab
    addresses, and each notebook's install cell (its first code cell), rendered anew. Files
    already right are left untouched.

    Args:
        slug: `"OWNER/NAME"` (or the GitHub URL) of the repository.
        root: the lungkit checkout.

    Returns:
        list of the paths it changed.
    """
    root = Path(root)
    new = slug_of(slug)
    old = slug_of(read_repository(root))
    url = GITHUB + new
    cell = install_cell(url)
    updates = {}
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    updates[pyproject] = (text, REPOSITORY_LINE.sub(rf"\g<1>{url}\g<3>", text))
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    updates[readme] = (text, _replace_slug(text, old, new))
    for path in notebook_paths(root):
        text = path.read_text(encoding="utf-8")
        notebook = json.loads(text)
        for each in notebook["cells"]:
            if each["cell_type"] == "markdown":
                _set_cell_source(each, _replace_slug(_cell_source(each), old, new))
        code = [each for each in notebook["cells"] if each["cell_type"] == "code"]
        if not code:
            raise ValueError(f"{path} has no code cell: its first one is the install cell")
        _set_cell_source(code[0], cell)
        updates[path] = (text, _notebook_text(notebook))
    changed = [path for path, (before, after) in updates.items() if after != before]
    for path in changed:
        _write_atomic(path, updates[path][1])
    return changed


def check(root="."):
    """What under `root` disagrees with `pyproject.toml`'s repository address (empty: nothing).

    Checks that the README has a Colab badge for every notebook and none for another
    repository, and that each notebook's badge and install cell match the address and version.
    """
    root = Path(root)
    url = read_repository(root)
    slug = slug_of(url)
    problems = []
    expected_cell = install_cell(url)
    readme = (root / "README.md").read_text(encoding="utf-8")
    badges = set(re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", readme))
    problems += [f"README.md has Colab badges for {other}, pyproject.toml names {slug}"
                 for other in sorted(badges - {slug})]
    paths = notebook_paths(root)
    if not paths:
        problems.append(f"no notebooks match {NOTEBOOK_GLOB}")
    for path in paths:
        badge = COLAB_BADGE_URL.format(slug=slug, name=path.stem)
        if f"]({badge})" not in readme:
            problems.append(f"README.md has no Colab badge {badge}")
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        if not cells or f"]({badge})" not in _cell_source(cells[0]):
            problems.append(f"{path.name}: its first cell has no Colab badge {badge}")
        code = [_cell_source(cell) for cell in cells if cell["cell_type"] == "code"]
        if not code or code[0] != expected_cell:
            problems.append(f"{path.name}: its install cell differs from "
                            f"lungkit.tools.install_cell({url!r}, {__version__!r})")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lungkit.tools",
        description="Keep the repository address in one place: pyproject.toml's [project.urls] "
        "Repository, with the README's and notebooks' Colab badges and install cells.")
    parser.add_argument("--root", default=".", help="the lungkit checkout (default: here)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    set_parser = commands.add_parser(
        "set-repo", help="point pyproject.toml, README badges and notebooks at OWNER/NAME",
        description="Rewrite the repository address in pyproject.toml, the README's and the "
        "notebooks' badges, and re-render every notebook's install cell (which installs "
        "lungkit in Colab from that repository at tag v<version>). Run it in a clone of your "
        "fork, commit, and push with `git push --tags`.")
    set_parser.add_argument("slug", metavar="OWNER/NAME", help="e.g. my-lab/lungkit")
    commands.add_parser("check", help="list what disagrees with pyproject.toml's address")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not (root / "pyproject.toml").is_file():
        parser.error(f"--root must be a lungkit checkout (with pyproject.toml). "
                     f"Received: --root {args.root}")
    try:
        if args.command == "set-repo":
            changed = set_repo(args.slug, root)
            for path in changed:
                print(f"updated {path}")
            print(f"{GITHUB}{slug_of(args.slug)}: {len(changed)} files changed")
            return 0
        problems = check(root)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
