"""The error catalogue (docs/troubleshooting.md) is generated from the code and current; every message the
command line shows names its fix, on one line, with the right article before a type name."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gen_errors", ROOT / "docs" / "gen_errors.py")
gen_errors = importlib.util.module_from_spec(spec)
sys.modules["gen_errors"] = gen_errors  # dataclasses look their module up while the class is built
spec.loader.exec_module(gen_errors)

# Messages raised without a fix in them, in modules maintained elsewhere: fix the message, then drop it here.
WITHOUT_FIX: set[str] = set()
# "is a {type}" reads "is a int" for an int: write f"is {with_article(type(x).__name__)}" (fastmaml._text).
A_BEFORE_TYPE: set[str] = set()


@pytest.fixture(scope="module")
def errors():
    return gen_errors.collect()


def test_the_troubleshooting_page_is_generated_from_the_current_messages(errors):
    page = gen_errors.render(errors)
    assert page == gen_errors.render(gen_errors.collect()), "the page must not depend on anything but the code"
    assert gen_errors.PAGE.read_text() == page, (
        "docs/troubleshooting.md is out of date with the error messages in src/fastmaml; "
        f"regenerate it: {gen_errors.COMMAND}")


def test_the_catalogue_finds_the_messages_as_the_cli_prints_them(errors):
    by_where = {(e.where, e.message) for e in errors}
    # an f-string with its placeholders, a module constant filled in, a message split over two literals
    assert ("fastmaml.train.config._coerce",
            "{name}={value} is not a valid {type}; give {type}{spelled}") in by_where
    assert any(e.message.startswith("{run_dir} is not a fastmaml run folder (no config.yaml)") for e in errors)
    assert ("fastmaml.cli.eval_path",
            "--out {out} exists; pass --overwrite to replace it, or choose another --out") in by_where
    # only what the command line shows as one line: no RuntimeError, AssertionError or interruption
    assert {e.exception for e in errors} <= {"ValueError", "TypeError", "FileNotFoundError", "FileExistsError",
                                             "PermissionError", "NotADirectoryError", "FloatingPointError",
                                             "UnpicklingError", "KeyError", "ImportError", "ModuleNotFoundError",
                                             "OutOfMemory"}
    assert len(errors) > 150


def test_the_fix_column_is_the_part_after_the_last_semicolon():
    def error(message):
        return gen_errors.Error(message, "ValueError", "cli.py", "fastmaml.cli.run", 1)

    assert error("inner_lr=-1.0; it must be >= 0").fix == "it must be >= 0"
    assert error("a; b; lower x").fix == "lower x"
    assert error("plotting needs matplotlib: pip install 'fastmaml[plot]'").fix == "pip install 'fastmaml[plot]'"
    assert error("rank=3 is outside 0..1").fix == "" and not error("rank=3 is outside 0..1").has_fix
    # a ';' or ':' inside brackets is not the fix's
    assert error("name a recipe, e.g. `fastmaml train sinusoid` (list them: fastmaml recipes)").fix == ""
    assert error("x (a; b) is wrong; use y").fix == "use y"


def test_every_message_the_cli_shows_names_its_fix(errors):
    missing = sorted({e.message for e in errors if not e.has_fix} - WITHOUT_FIX)
    assert not missing, f"say what to do, after a ';' (STYLE.md, Errors): {missing}"
    gone = WITHOUT_FIX - {e.message for e in errors}
    assert not gone, f"fixed or removed: drop from WITHOUT_FIX {gone}"


def test_every_message_is_one_line(errors):
    # the command line prints the first line only
    assert not [e.where for e in errors if "\n" in e.message]


def test_a_type_name_gets_the_right_article(errors):
    wrong = {e.where for e in errors if re.search(r"\ba \{type\}", e.message)}
    assert not wrong - A_BEFORE_TYPE, f"use fastmaml._text.with_article: {sorted(wrong - A_BEFORE_TYPE)}"
    assert not A_BEFORE_TYPE - wrong, f"fixed: drop from A_BEFORE_TYPE {sorted(A_BEFORE_TYPE - wrong)}"


def test_the_regenerate_command_is_the_one_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen_errors, "PAGE", tmp_path / "troubleshooting.md")
    assert gen_errors.main(["--check"]) == 1
    assert gen_errors.COMMAND in capsys.readouterr().out
    assert gen_errors.main([]) == 0 and gen_errors.main(["--check"]) == 0


def test_the_page_quotes_the_busy_machine_line_as_runs_log_it():
    from test_cli import BUSY_NOTE

    assert BUSY_NOTE in " ".join(gen_errors.PAGE.read_text().split())
