"""The documentation runs as written: README.md and every page under docs/.

- Every ```python block is executed, page by page in one namespace (a tutorial's blocks build on each
  other), in a scratch folder. A block preceded by ``<!-- not-run: REASON -->`` (it needs data a user
  supplies, a GPU, a finished run or minutes of compute) is compiled only. ``<!-- test-shortens: A => B -->``
  before a block replaces the text A (it must occur exactly once) by B for the test: fewer iterations.
- Every ``fastmaml ...`` command, in a ```bash block or inline code, is parsed by the command line's own
  parser; ``fastmaml train RECIPE key=value`` also resolves the recipe and its overrides into the run
  configuration (unknown keys and bad values fail), without training. ``pip install`` lines name extras
  that pyproject.toml declares.
- Every public name (``fastmaml.__all__`` and each subpackage's ``__all__``) is documented by a ``:::``
  directive of the API reference.
- README.md is at most 6,000 characters, and the site's nav names every page.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
import sys
import types
from pathlib import Path

import pytest

from fastmaml.core import compiled as compiled_step

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
PUBLIC = ["fastmaml", "fastmaml.core", "fastmaml.tasks", "fastmaml.train", "fastmaml.algorithms", "fastmaml.models",
          "fastmaml.data", "fastmaml.rl"]
FENCE = re.compile(r"((?:^<!--.*?-->\n)*)^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not-run: (.+?) -->")
QUOTES_MESSAGES = {"docs/troubleshooting.md"}
SHORTENS = re.compile(r"<!-- test-shortens: (.+?) => (.+?) -->")


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, language: str) -> list[tuple[str, str]]:
    """``(comments, code)`` of each fenced block of ``language``; comments are the HTML comment lines right above."""
    return [(comments, code) for comments, lang, code in FENCE.findall(page.read_text()) if lang == language]


def runnable(comments: str, code: str) -> str | None:
    """The code as the test runs it (shortened), or None for a block marked not-run."""
    if NOT_RUN.search(comments):
        return None
    for old, new in SHORTENS.findall(comments):
        assert code.count(old) == 1, f"test-shortens: {old!r} occurs {code.count(old)} times in the block"
        code = code.replace(old, new)
    return code


def commands(page: Path) -> list[str]:
    """Every ``fastmaml ...`` command of the page: bash blocks' lines (continuations joined) and inline code."""
    text = page.read_text()
    lines = [line for _, code in blocks(page, "bash") for line in code.replace("\\\n", " ").splitlines()]
    # inline code: whole commands (a bare subcommand named in prose, `fastmaml plot`, is not one)
    # (the error catalogue quotes the library's messages verbatim, `pip install 'fastmaml[cli]'` among them)
    installs = ("pip install ",) if name(page) not in QUOTES_MESSAGES else ()
    lines += [span for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
              if span.startswith(("fastmaml ", *installs)) and (len(span.split()) > 2 or span == "fastmaml recipes")]
    found = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        for part in re.split(r"&&|;", line):
            words = shlex.split(part)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
                words.pop(0)
            if words:
                found.append(shlex.join(words))
    return found


PYTHON_PAGES = [page for page in PAGES if blocks(page, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    # compile="auto" compiles once eager calls have cost 10 s, which a loaded CI machine can reach within a
    # block; compiling changes the speed, never the numbers, and would cost the test tens of seconds
    monkeypatch.setattr(compiled_step, "COMPILE_AFTER_S", float("inf"))
    module = types.ModuleType("docs_page")  # the blocks run as a user's script would: in a module of their own
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for index, (comments, code) in enumerate(blocks(page, "python")):
        where = f"{name(page)}, python block {index + 1}"
        run = runnable(comments, code)
        compiled = compile(code if run is None else run, where, "exec")
        if run is not None:
            exec(compiled, namespace)


def check_command(words: list[str], where: str) -> None:
    from fastmaml.cli import _parser
    from fastmaml.rl import config as rlcfg
    from fastmaml.train import config as cfg

    if words[:2] == ["pip", "install"]:
        tomllib = pytest.importorskip("tomllib")  # Python 3.11+
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for spec in words[2:]:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", spec)
            if spec.startswith("-"):
                continue
            assert match, f"{where}: `pip install {spec}`; install the checkout as -e '.[EXTRAS]'"
            unknown = set(match.group(1).split(",")) - set(extras)
            assert not unknown, f"{where}: extras {unknown} are not in pyproject.toml"
        return
    if words[0] != "fastmaml":
        return
    try:
        args = _parser().parse_args(words[1:])
    except SystemExit as error:
        raise AssertionError(f"{where}: `{shlex.join(words)}` does not parse") from error
    if args.command == "train" and args.resume is None and args.recipe not in (None, "RECIPE"):  # RECIPE: a placeholder
        recipe_file = args.recipe.endswith((".yaml", ".yml"))
        assert recipe_file or args.recipe in cfg.recipe_names(), f"{where}: no recipe {args.recipe!r}"
        if not recipe_file:
            resolve = rlcfg.resolve if rlcfg.is_rl_recipe(args.recipe) else cfg.resolve
            try:
                resolve(args.recipe, args.overrides)
            except (ValueError, TypeError) as error:
                raise AssertionError(f"{where}: `{shlex.join(words)}`: {error}") from error


COMMAND_PAGES = [page for page in PAGES if commands(page)]


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=name)
def test_commands_parse(page):
    for command in commands(page):
        check_command(shlex.split(command), name(page))


def test_a_bad_command_or_override_fails_the_check():
    with pytest.raises(AssertionError, match="does not parse"):
        check_command(["fastmaml", "train", "sinusoid", "--epochs", "3"], "here")
    with pytest.raises(AssertionError, match="unknown config key"):
        check_command(["fastmaml", "train", "sinusoid", "inner_rate=0.1"], "here")
    with pytest.raises(AssertionError, match="no recipe"):
        check_command(["fastmaml", "train", "omniglot"], "here")
    with pytest.raises(AssertionError, match="install the checkout"):
        check_command(["pip", "install", "fastmaml[rl]"], "here")


def test_not_run_blocks_are_marked_before_the_block():
    text = ("<!-- not-run: needs data -->\n```python\nx = 1\n```\n"
            "<!-- test-shortens: 9 => 2 -->\n```python\ny = 9\n```\n")
    page = [(comments, code) for comments, _, code in FENCE.findall(text)]
    assert [runnable(*block) for block in page] == [None, "y = 2\n"]


def reference_objects() -> set[int]:
    """ids of the objects that the ``::: path`` directives of docs/reference document."""
    documented: set[int] = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        for path in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M):
            module, _, attribute = path.rpartition(".")
            try:  # a package's attribute first: fastmaml.train.evaluate is the function, not the module
                obj = getattr(importlib.import_module(module), attribute)
            except (ModuleNotFoundError, AttributeError, ValueError):
                obj = importlib.import_module(path)
            documented.add(id(obj))
    return documented


def test_every_public_name_is_in_the_api_reference():
    documented = reference_objects()
    missing = [f"{package}.{public}" for package in PUBLIC for public in importlib.import_module(package).__all__
               if id(getattr(importlib.import_module(package), public)) not in documented]
    assert not missing, f"public names without a ::: directive in docs/reference: {missing}"


def test_every_config_key_and_recipe_is_in_the_configuration_reference():
    from fastmaml.rl.config import PolicyConfig, RLConfig
    from fastmaml.train.config import DataConfig, ModelConfig, TrainConfig, recipe_names

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    documented = set(re.findall(r"`([\w.-]+)`", page))
    sections = (("", TrainConfig), ("data.", DataConfig), ("model.", ModelConfig), ("", RLConfig),
                ("policy.", PolicyConfig))
    keys = {prefix + field.name for prefix, cls in sections for field in dataclasses.fields(cls)}
    missing = sorted(keys - {"data", "model", "policy"} - documented)
    assert not missing, f"config keys missing from docs/reference/configuration.md: {missing}"
    assert not set(recipe_names()) - documented, f"recipes missing there: {set(recipe_names()) - documented}"


def test_every_command_line_option_is_in_the_configuration_reference():
    from fastmaml.cli import _parser

    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    (subcommands,) = [action for action in _parser()._actions if action.dest == "command"]
    missing = []
    for command, parser in subcommands.choices.items():
        rows = [line for line in page.splitlines() if line.startswith(f"| `fastmaml {command}")]
        assert len(rows) == 1, f"docs/reference/configuration.md needs one table row for `fastmaml {command}`"
        options = [option for action in parser._actions for option in action.option_strings if option != "-h"]
        missing += [f"{command} {option}" for option in options if option != "--help" and f"`{option}" not in rows[0]]
    assert not missing, f"options missing from docs/reference/configuration.md's command table: {missing}"


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 6000, f"README.md has {len(readme)} characters; keep it at most 6,000 (move detail to docs/)"
    first = blocks(ROOT / "README.md", "bash")[0][1].splitlines()
    assert first == ["pip install -e '.[cli,plot]' && fastmaml train sinusoid", "pip install -e '.[dev]' && pytest"]


def test_the_nav_names_every_page():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.M))
    pages = {str(page.relative_to(ROOT / "docs")) for page in (ROOT / "docs").rglob("*.md")}
    assert pages == listed, f"pages not in the nav: {pages - listed}; nav entries without a page: {listed - pages}"



def test_the_how_to_family_trains_from_its_recipe(tmp_path, monkeypatch, capsys):
    """docs/how-to/new-task-family.md: its gymnasium family, saved as corridor.py, trains from its recipe file."""
    pytest.importorskip("gymnasium")
    from fastmaml.cli import main

    page = ROOT / "docs" / "how-to" / "new-task-family.md"
    family = blocks(page, "python")[1][1].split("family = CorridorTasks()")[0]
    (tmp_path / "corridor.py").write_text("import torch\n" + family)
    (tmp_path / "corridor.yaml").write_text(blocks(page, "yaml")[0][1])
    (command,) = commands(page)
    assert command == "fastmaml train corridor.yaml --out runs/corridor"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = shlex.split(command)[1:]
    argv[2:2] = ["iterations=2", "baseline_iterations=1", "eval_tasks=3"]  # after the recipe: a short run
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "corridor" / "eval.json").is_file()
