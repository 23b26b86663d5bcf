"""Every docstring example runs as written: ``doctest`` over every module of src/fastmaml.

Objects' docstrings are found as ``doctest`` finds them; a module constant's docstring (the string right
after its assignment, which the API reference shows) is run too. The examples see their module's names
plus ``torch`` and ``fm`` (``import fastmaml as fm``), run in a scratch folder each, and are compared with
``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``. A line marked ``# doctest: +SKIP`` (it needs a real data set, a
GPU or minutes of compute; the example says which) is not run. A module whose examples need an optional
extra that is not installed is skipped, naming the extra; no other module is.
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import fastmaml
from fastmaml.core import compiled as compiled_step
from fastmaml.core.exact import needs_exact_ops

SRC = Path(fastmaml.__file__).resolve().parent
MODULES = sorted(
    ".".join(("fastmaml", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
    for path in SRC.rglob("*.py")
)
# modules whose examples need an optional extra: the packages they import
EXTRAS = {
    "fastmaml.kinds": ("yaml",),  # a run folder's config.yaml
    "fastmaml.train.run": ("yaml",),
    "fastmaml.rl.envs": ("gymnasium",),
    "fastmaml.rl.learner": ("gymnasium",),
    "fastmaml.rl.locomotion": ("gymnasium", "mujoco"),
    "fastmaml.rl.ant": ("gymnasium", "mujoco"),
}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def attribute_docstrings(module) -> list[tuple[str, str, int]]:
    """``(name, docstring, line)`` of each module-level assignment followed by a string, as griffe reads them."""
    body = ast.parse(Path(module.__file__).read_text()).body
    found = []
    for statement, after in zip(body, body[1:]):
        if not (isinstance(statement, (ast.Assign, ast.AnnAssign)) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            continue
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        names = [target.id for target in targets if isinstance(target, ast.Name)]
        if names:
            found.append((names[0], after.value.value, after.lineno))
    return found


def test_every_module_is_collected():
    assert len(MODULES) > 60 and "fastmaml" in MODULES and "fastmaml.core.inner" in MODULES
    assert set(EXTRAS) <= set(MODULES), "EXTRAS names a module that does not exist"


@pytest.mark.filterwarnings("error")  # an example that warns shows users a warning: fix the example
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    for package in EXTRAS.get(name, ()):
        pytest.importorskip(package, reason=f"{name}'s examples need {package} (pip install -e '.[dev]')")
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    # compiling changes the speed of an example, never its numbers, and would cost the test tens of seconds
    monkeypatch.setattr(compiled_step, "COMPILE_AFTER_S", float("inf"))
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    finder = doctest.DocTestFinder(exclude_empty=True)
    extra = {"torch": torch, "fm": fastmaml}
    tests = finder.find(module, name, extraglobs=extra)
    parser = doctest.DocTestParser()
    for attribute, text, line in attribute_docstrings(module):
        tests.append(parser.get_doctest(text, {**vars(module), **extra}, f"{name}.{attribute}", module.__file__, line))
    for index, test in enumerate(tests):
        (tmp_path / str(index)).mkdir()
        monkeypatch.chdir(tmp_path / str(index))  # each example in a folder of its own (runs/sinusoid...)
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} of {attempted} docstring example lines of {name} failed (printed above)"


def test_a_constant_s_docstring_example_is_run():
    import fastmaml.algorithms

    assert "ALGORITHMS" in {attribute for attribute, _, _ in attribute_docstrings(fastmaml.algorithms)}


def test_a_module_whose_forward_has_no_module_name_needs_exact_ops():
    # a class defined by exec without __name__ in its globals: its forward's __module__ is None
    namespace = {"nn": nn}
    exec("class Scaled(nn.Module):\n    def forward(self, x):\n        return 2 * x\n", namespace)
    module = namespace["Scaled"]()
    assert type(module).forward.__module__ is None
    assert needs_exact_ops(module)  # its own forward may call anything
