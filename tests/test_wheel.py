"""The release installs: the built wheel, in a fresh virtual environment, imports and runs from there.

One test, about 30 s: ``python -m build`` (sdist, then the wheel from the sdist, as a user's pip would; pip's
build isolation fetches setuptools from the package registry), a fresh venv that sees this interpreter's
packages (torch is not downloaded again), ``pip install --no-deps`` of the wheel into it, then the venv's own
``fastmaml`` script lists the recipes and trains the sinusoid for a few iterations.
"""

import json
import math
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("build", reason="the wheel test needs the build package (pip install -e '.[dev]')")

ROOT = Path(__file__).parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "src" / "fastmaml" / "recipes").glob("*.yaml"))
TRAIN = ["iterations=20", "log_every=10", "eval_tasks=10", "baseline_iterations=10", "compile=false", "threads=1"]


def run(args: list, cwd: Path, env: dict, timeout: float = 240) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fresh_venv(path: Path, env: dict) -> Path:
    """A venv that sees this interpreter's packages: ``--system-site-packages``, and, since this interpreter
    may itself be a venv (whose packages the base's site-packages lack), a .pth naming its site-packages.
    Both come after the venv's own site-packages, so an installed fastmaml shadows the checkout's."""
    run([sys.executable, "-m", "venv", "--system-site-packages", path], path.parent, env)
    venv_site = run([path / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    path.parent, env).strip()
    outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (Path(venv_site) / "outer_site_packages.pth").write_text("\n".join(outer) + "\n")
    return path / "bin"


@pytest.mark.timeout(600)
def test_the_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT], tmp_path, env)
    wheels = list(dist.glob("fastmaml-*-py3-none-any.whl"))
    assert len(wheels) == 1 and len(list(dist.glob("fastmaml-*.tar.gz"))) == 1, sorted(dist.iterdir())

    bin_dir = fresh_venv(tmp_path / "venv", env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
         wheels[0]], tmp_path, env)

    # imported from the venv, not from the editable checkout; the package data came with it
    probe = ("import importlib.metadata as m, json, fastmaml, pathlib; p = pathlib.Path(fastmaml.__file__).parent; "
             "print(json.dumps({'file': fastmaml.__file__, 'version': fastmaml.__version__, "
             "'metadata': m.version('fastmaml'), 'typed': (p / 'py.typed').is_file(), "
             "'recipes': sorted(r.stem for r in (p / 'recipes').glob('*.yaml'))}))")
    info = json.loads(run([bin_dir / "python", "-c", probe], tmp_path, env))
    print("fastmaml imported from", info["file"])
    assert Path(info["file"]).resolve().is_relative_to((tmp_path / "venv").resolve()), info["file"]
    assert info["version"] == info["metadata"] == wheels[0].name.split("-")[1]
    assert info["typed"], "py.typed is not in the installed package"
    assert info["recipes"] == RECIPES

    listing = run([bin_dir / "fastmaml", "recipes"], tmp_path, env)
    assert {line.split()[0] for line in listing.splitlines() if line.strip()} >= set(RECIPES), listing

    out = tmp_path / "run"
    table = run([bin_dir / "fastmaml", "train", "sinusoid", *TRAIN, "--out", out, "--no-progress"], tmp_path, env)
    assert {line.split()[0] for line in table.splitlines() if line.strip()} >= {"maml", "pretrained", "scratch"}
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in history] == [10, 20] and all(math.isfinite(r["loss"]) for r in history)
    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {"maml", "pretrained", "scratch"}
    for name, result in results.items():
        assert len(result["loss"]) == 11 and all(math.isfinite(c["mean"]) for c in result["loss"]), name
