"""Install as users do: build the sdist and the wheel, install them into fresh venvs outside the
checkout, and run the `datagen` command from another folder.

Every other test runs against the editable install, which once hid a wheel that read its
prompts through the repr of a `MultiplexedPath`: every test passed while `pip install datagen`
failed at the first command. Here a missing package-data entry, a resource read through a
path relative to the checkout, or metadata twine rejects fails the README's test command.

The Python 3.11 venvs see the dev venv's third-party packages through a `.pth` line naming its
site-packages (a plain path line: the `.pth` hook of the editable datagen in that folder is
not run there), so they need no download and never import the checkout's datagen. Python 3.12
gets the same wheel and, from the index, the light dependencies its commands import.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# Every file in these checkout folders must be in an install: folder -> (package, folder in it).
SHIPPED = {
    "prompts": ("datagen._prompts", ""),
    "seeds": ("datagen._seeds", ""),
    "pipelines": ("datagen._pipelines", ""),
    "finetune/templates": ("finetune", "templates"),
}

# What an install holds, read through importlib.resources inside that install's interpreter.
INVENTORY = r"""
import json, sys
from importlib.resources import files

def walk(node, prefix=""):
    for child in node.iterdir():
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from walk(child, prefix + child.name + "/")
        else:
            yield prefix + child.name

import datagen, finetune
found = {"datagen": datagen.__file__, "finetune": finetune.__file__}
for folder, (package, sub) in json.loads(sys.argv[1]).items():
    node = files(package)
    for part in filter(None, sub.split("/")):
        node = node / part
    found[folder] = sorted(walk(node)) if node.is_dir() else []
print(json.dumps(found))
"""

# The dependencies the 3.12 venv gets: what `--version`, `pipelines`, `init`, `convert` and an
# openai:* stage import (heavy ones, torch and the rest, are imported lazily by design).
LIGHT = {"pydantic", "pyyaml", "jinja2", "aiohttp", "tenacity", "rich", "tqdm", "numpy"}


def expected_files() -> dict[str, list[str]]:
    return {
        folder: sorted(
            path.relative_to(ROOT / folder).as_posix()
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        )
        for folder in SHIPPED
    }


def run(args: list[str | Path], cwd: Path, timeout: float = 600, **env: str) -> str:
    """Run a command the way a user's shell would: no PYTHONPATH, from `cwd`; fail with its output."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATAGEN_PROMPTS", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env={**environ, **env}, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def make_venv(python: str | Path, folder: Path, see_dev_packages: bool) -> Path:
    """A fresh venv; with `see_dev_packages`, the dev venv's site-packages on its path (not its datagen)."""
    run([python, "-m", "venv", folder], cwd=folder.parent)
    if see_dev_packages:
        ours = run([folder / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=folder.parent).strip()
        dev = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        (Path(ours) / "dev_venv_packages.pth").write_text("".join(f"{path}\n" for path in dev))
    return folder


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """`python -m build` (the sdist, then the wheel built from it) of a copy of the checkout
    without build leftovers, and `twine check` of both."""
    base = tmp_path_factory.mktemp("dists")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache",
        "runs", "tmp"))
    out = base / "dist"
    run([sys.executable, "-m", "build", "--outdir", out, source], cwd=base)
    built = {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}
    run([sys.executable, "-m", "twine", "check", "--strict", *built.values()], cwd=base)
    return built


def install(python: str | Path, dist: Path, tmp_path: Path, see_dev_packages: bool, extra: Sequence[str] = ()) -> Path:
    """`dist` installed into a fresh venv, checked to hold every shipped file and to report its
    version; returns its bin folder. The work folder, `tmp_path/work`, is outside the checkout."""
    venv = make_venv(python, tmp_path / "venv", see_dev_packages)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    run([*pip, "--no-deps", *(["--no-index"] if dist.suffix == ".whl" else []), dist], cwd=tmp_path)
    if extra:
        run([*pip, *extra], cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    found = json.loads(run([venv / "bin" / "python", "-c", INVENTORY, json.dumps(SHIPPED)], cwd=work))
    assert found.pop("datagen").startswith(str(venv)) and found.pop("finetune").startswith(str(venv)), \
        "the checkout's code was imported, not the installed package's"
    assert found == expected_files()
    version = dist.name.split("-")[1].removesuffix(".tar.gz")
    assert run([venv / "bin" / "datagen", "--version"], cwd=work).strip() == f"datagen {version}"
    return venv / "bin"


def test_version_is_declared_once(dists) -> None:
    from datagen import __version__

    assert dists["wheel"].name.startswith(f"datagen-{__version__}-")
    assert dists["sdist"].name == f"datagen-{__version__}.tar.gz"


def test_every_shipped_folder_is_checked() -> None:
    """A new folder mapped into the package in pyproject must join SHIPPED, or it goes unchecked."""
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(mapped.values()) <= set(SHIPPED)


def test_wheel_works_outside_the_checkout(dists, tmp_path, scripted_server) -> None:
    bin_ = install(sys.executable, dists["wheel"], tmp_path, see_dev_packages=True)
    python, datagen, work = bin_ / "python", bin_ / "datagen", tmp_path / "work"
    listed = run([datagen, "pipelines"], cwd=work)
    assert {"quickstart", "alpaca", "evol", "full", "study"} <= {line.split()[0] for line in listed.splitlines()}
    run([datagen, "init", "quickstart", "my.yaml"], cwd=work)
    assert (work / "my.yaml").read_text() == (ROOT / "pipelines" / "quickstart.yaml").read_text()
    # The plan counts the bundled seeds and prompt sizes: the same as the checkout's, from any folder.
    plan = run([datagen, "run", "quickstart", "--dry-run"], cwd=work).splitlines()
    checkout = run([Path(sys.executable).parent / "datagen", "run", "pipelines/quickstart.yaml", "--dry-run"],
                   cwd=ROOT).splitlines()
    assert plan[1:] == checkout[1:] and len(plan) > 4

    seeds = run([python, "-c", "from datagen.io import default_seeds_path; print(default_seeds_path())"], cwd=work)
    run([datagen, "convert", "--input", seeds.strip(), "--format", "sharegpt", "--out", "seeds.sharegpt.jsonl"],
        cwd=work)
    assert len((work / "seeds.sharegpt.jsonl").read_text().splitlines()) == 175

    served = ["--llm", "openai:test", "--base-url", scripted_server.base_url, "--cache", "llm_cache.sqlite"]
    run([datagen, "self-instruct", "--num-instructions", "3", "--request-batch-size", "2", "--no-progress", *served,
         "--out", "si.jsonl"], cwd=work)
    run([datagen, "evolve", "--input", "si.jsonl", "--rounds", "1", "--no-progress", *served, "--out", "evo.jsonl"],
        cwd=work)
    assert len((work / "si.jsonl").read_text().splitlines()) == 3
    assert (work / "evo.jsonl").read_text().strip() and scripted_server.stats.requests > 0

    reply = run([datagen, "generate", "--llm", "local", "--prompt", "Name three fruits.", "--max-tokens", "8",
                 "--temperature", "0", "--cache", "local_cache.sqlite", "--no-progress"], cwd=work)
    assert reply.strip()


def test_sdist_installs_every_shipped_file(dists, tmp_path) -> None:
    """pip builds the wheel from the sdist itself, as for a platform without our wheel."""
    install(sys.executable, dists["sdist"], tmp_path, see_dev_packages=True)


def python312() -> str | None:
    """A Python 3.12 interpreter: on PATH, or one pyenv installed (its shim fails unless selected)."""
    home = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in [shutil.which("python3.12"), *sorted(home.glob("versions/3.12*/bin/python3.12"), reverse=True)]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return str(candidate)
    return None


def light_requirements(wheel: Path) -> list[str]:
    """The wheel's own declared ranges for the LIGHT dependencies, so 3.12 tests what we declare."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    wanted = []
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            requirement = line.split(":", 1)[1].strip()
            if re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() in LIGHT:
                wanted.append(requirement)
    assert len(wanted) == len(LIGHT), f"{sorted(LIGHT)} should each be declared once; found {wanted}"
    return wanted


def test_wheel_on_python_312(dists, tmp_path, scripted_server) -> None:
    """The full suite runs on 3.11; on 3.12 the wheel installs, carries its files and runs the
    commands that need no torch, a stage against the loopback server included."""
    python = python312()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI tests the package on Python 3.12, and none is installed")
        pytest.skip("no Python 3.12 interpreter here")
    bin_ = install(python, dists["wheel"], tmp_path, see_dev_packages=False, extra=light_requirements(dists["wheel"]))
    datagen, work = bin_ / "datagen", tmp_path / "work"
    assert "quickstart" in run([datagen, "pipelines"], cwd=work)
    run([datagen, "init", "quickstart", "my.yaml"], cwd=work)
    assert (work / "my.yaml").read_text() == (ROOT / "pipelines" / "quickstart.yaml").read_text()
    run([datagen, "self-instruct", "--num-instructions", "3", "--request-batch-size", "2", "--no-progress",
         "--llm", "openai:test", "--base-url", scripted_server.base_url, "--cache", "llm_cache.sqlite",
         "--out", "si.jsonl"], cwd=work)
    assert len((work / "si.jsonl").read_text().splitlines()) == 3
