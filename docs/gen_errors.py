"""Write docs/troubleshooting.md: every one-line error the ``fastmaml`` command can print, read from the code.

The page is generated, so it cannot drift from the messages: run ``python docs/gen_errors.py`` after adding
or changing an error message (``python docs/gen_errors.py --check`` only says whether the page is current;
tests/test_error_catalogue.py fails while it is not).

Every ``raise SomeError("...")`` under src/fastmaml whose exception the command line shows as one line
(``fastmaml.cli.USER_ERRORS`` and ``ImportError``, subclasses included) is listed with its message template:
f-string placeholders are shown as ``{name}``, module-level string constants as their values.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "fastmaml"
PAGE = ROOT / "docs" / "troubleshooting.md"
COMMAND = "python docs/gen_errors.py"

# Sections of the page, in order: a raise goes to the first whose prefix its place (module.function) starts with.
TOPICS = (
    ("fastmaml.cli", "The command line"),
    ("fastmaml.train.config", "Recipes and key=value overrides"),
    ("fastmaml.rl.config", "Recipes and key=value overrides"),
    ("fastmaml.train.run", "Run folders, checkpoints and evaluation"),
    ("fastmaml.train.checkpoint", "Run folders, checkpoints and evaluation"),
    ("fastmaml.train.distributed.Context.device", "Devices"),
    ("fastmaml.train.placement", "Devices"),
    ("fastmaml.train.distributed", "Several processes (--nproc-per-node)"),
    ("fastmaml.train", "Training"),
    ("fastmaml.data", "Data sets"),
    ("fastmaml.tasks", "Tasks and task batches"),
    ("fastmaml.models", "Models"),
    ("fastmaml.algorithms", "Algorithms"),
    ("fastmaml.core", "Adaptation and execution"),
    ("fastmaml.rl", "Meta-RL"),
    ("fastmaml", "Plots and the rest"),
)

# Words that name what to do: a message without a ';' must hold one of these to carry its fix.
FIX_WORDS = ("use", "pass", "lower", "raise", "choose", "give", "drop", "add", "set", "install", "check", "point",
             "name", "create", "remove", "delete", "put", "call", "fix", "write", "rename", "move", "run", "start",
             "increase", "reduce", "keep", "select", "make", "e.g.", "list them", "resume with", "must", "needs",
             "pip install", "fastmaml train", "fastmaml eval", "fastmaml recipes")
FIX_PATTERN = r"\b(" + "|".join(w.replace(".", r"\.") for w in FIX_WORDS) + r")(\b|\s|$)"

INTRO = """\
# Troubleshooting: every error message

Bad input to `fastmaml` stops the command with **one line** on standard error, no traceback, and **exit
status 2**. The line names what is wrong and, after the last `;`, what to do about it:

```console
$ fastmaml train sinusoid inner_lr=-1
fastmaml: error: inner_lr=-1.0; it must be >= 0
$ echo $?
2
```

Nothing is written before a run's config, data, model and checkpoint have been checked, so a bad input
leaves a run folder as it was. In a run started with `--nproc-per-node N`, the job ends with the first
failing process's line (`fastmaml[rank 1]: error: ...` when it is not process 0). Mistakes in the command
itself (an unknown command or option) get argparse's usage line, also with exit status 2. A run stopped by
Ctrl-C or SIGTERM saves a checkpoint first and ends with `fastmaml: interrupted at iteration N; resume with
fastmaml train --resume RUN_DIR` (exit status 130 or 143). The Python API raises the same messages, as the
exceptions named below.

The tables list all {count} messages, grouped by what they concern. A message is shown as the code writes it:
`{{name}}` stands for a value filled in at the time (`inner_lr={{value}}` reads `inner_lr=-1.0`). The fix is
the part after the last `;` (or a `:` that introduces it); where there is none, the message itself says it.
To find a message, search this page for its fixed words.

<!-- Generated from the code by `python docs/gen_errors.py`: edit the messages there, not here. -->
"""

OUTRO = """\
## Not errors, but surprising

**A run is much slower while other jobs use the machine.** With `threads=0` (the default; a recipe may set its
own), `fastmaml train` and `fastmaml eval` look at the load average first; when other jobs hold cores, the run uses
only the free ones and logs one line, e.g. `threads=0: the machine is busy (load average 1.3 on 2 cores), so
this run uses 1 thread instead of 2; set threads=N to choose`. Set `threads=N` to choose yourself; an
`OMP_NUM_THREADS` in the environment is also left as it is.

**`fastmaml eval RUN_DIR` did not change `eval.json`.** `eval.json` is the evaluation `fastmaml train` wrote at
the end of the run, and `fastmaml eval` keeps it: it writes `eval-<tasks>tasks-<steps>steps.json` beside it
(for example `eval-600tasks-10steps.json`) and prints where. It writes `eval.json` only when the run has none,
or with `--overwrite`; `--out FILE` puts the results anywhere else.
"""


@dataclass(frozen=True)
class Error:
    """One raise site: its message template, the exception's name and where it is."""

    message: str
    exception: str
    module: str  # src/fastmaml-relative path, e.g. "train/config.py"
    where: str  # dotted module and qualified function, e.g. "fastmaml.train.config._coerce"
    line: int

    @property
    def fix(self) -> str:
        """The part after the last ';', or after a ': ' that starts with a fix word, outside brackets; else ''."""
        tail = _after_last(self.message, ";")
        if tail is None:
            tail = _after_last(self.message, ": ")
            tail = tail if tail is not None and re.match(FIX_PATTERN, tail.strip().lower()) else None
        return tail.strip() if tail is not None else ""

    @property
    def has_fix(self) -> bool:
        """Whether the message tells the user what to do (a ';' clause or a fix word)."""
        return bool(self.fix) or re.search(FIX_PATTERN, self.message.lower()) is not None

    @property
    def topic(self) -> str:
        return next(title for prefix, title in TOPICS if f"{self.where}.".startswith(prefix + "."))


def _after_last(message: str, separator: str) -> str | None:
    """What follows the last ``separator`` outside brackets, or None: ``(list them: ...)`` holds no fix."""
    depth, found = 0, None
    for i, char in enumerate(message):
        depth += (char in "([{") - (char in ")]}")
        if depth == 0 and message.startswith(separator, i):
            found = i + len(separator)
    return message[found:] if found is not None else None


def shown_exceptions() -> tuple[type[BaseException], ...]:
    """The exceptions ``fastmaml`` prints as one line (what its ``main`` catches besides interruptions)."""
    sys.path.insert(0, str(ROOT / "src"))
    from fastmaml.cli import USER_ERRORS

    return (*USER_ERRORS, ImportError)


def _name(node: ast.expr) -> str | None:
    """``ValueError`` for ``ValueError`` and ``pickle.UnpicklingError`` for ``UnpicklingError``."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def project_exceptions(source: Path) -> dict[str, list[str]]:
    """The package's own exception classes by name, with their bases' names (``OutOfMemory: [MemoryError]``)."""
    classes: dict[str, list[str]] = {}
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [b for b in map(_name, node.bases) if b]
    return classes


def is_shown(name: str, shown: tuple[type[BaseException], ...], project: dict[str, list[str]]) -> bool:
    """Whether ``raise name(...)`` reaches the user as one line: ``name`` is one of ``shown`` or a subclass,
    a built-in one or one of the package's own (followed through ``project``'s bases)."""
    if name in {cls.__name__ for cls in shown}:
        return True
    builtin = getattr(builtins, name, None) or getattr(pickle, name, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        return issubclass(builtin, shown)
    return any(is_shown(base, shown, project) for base in project.get(name, []) if base != name)


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level constants as a message shows them: ``EVAL = "eval.json"``, ``CONFIG, LAST = ("config.yaml",
    ...)``, and tuples of strings as their repr (``EXECUTIONS`` -> ``('auto', 'vmap', 'loop')``)."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        pairs = zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) \
            else [(target, value)]
        for name, constant in pairs:
            try:
                literal = ast.literal_eval(constant)
            except ValueError:
                continue
            if isinstance(name, ast.Name) and name.id.isupper() and isinstance(literal, str):
                out[name.id] = literal
            elif isinstance(name, ast.Name) and name.id.isupper() and isinstance(literal, tuple) and \
                    all(isinstance(v, str) for v in literal):
                out[name.id] = repr(literal)
    return out


# Methods that reformat a value: a placeholder names the value itself (``prefix.rstrip('.')`` -> ``prefix``).
_STRING_METHODS = ("strip", "rstrip", "lstrip", "lower", "upper", "removeprefix", "removesuffix", "replace",
                   "as_posix", "resolve", "absolute", "expanduser", "tolist", "item")


_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//"}


def _placeholder(node: ast.expr, constants: dict[str, str]) -> str:
    """A short name for a value filled into a message: ``getattr(self, name)`` -> ``value``,
    ``type(model).__name__`` -> ``type``, ``tuple(x.shape)`` -> ``shape``, ``', '.join(valid)`` -> ``valid``."""
    if isinstance(node, ast.Name):
        return node.id.lstrip("_")
    if isinstance(node, ast.Attribute):
        if node.attr == "__name__":
            return "type"
        if node.attr == "shape":
            return "shape"
        text = ast.unparse(node)
        for owner in ("self.", "config.", "args."):
            text = text.removeprefix(owner)
        return text
    if isinstance(node, ast.Subscript):
        return _placeholder(node.value, constants)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr":
            return "value"
        if isinstance(func, ast.Name) and func.id == "type":
            return "type"
        if isinstance(func, ast.Attribute) and func.attr == "join" and node.args:
            return _placeholder(node.args[0], constants)
        if isinstance(func, ast.Name) and node.args and func.id in ("tuple", "sorted", "list", "set", "str", "repr",
                                                                   "int", "float", "len", "with_article", "abs"):
            return _placeholder(node.args[0], constants)
        if isinstance(func, ast.Attribute) and func.attr in _STRING_METHODS:
            return _placeholder(func.value, constants)
        return func.attr if isinstance(func, ast.Attribute) else ast.unparse(func).lstrip("_")
    if isinstance(node, ast.BoolOp):  # ``prefix or 'config'``
        return _placeholder(node.values[0], constants)
    if isinstance(node, ast.IfExp):  # ``rows[0] if rows else 'nothing'``
        return _placeholder(node.body, constants)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:  # ``world_size - 1``, ``out / 'eval.json'``
        right = node.right.value if isinstance(node.right, ast.Constant) else \
            constants.get(node.right.id, node.right.id) if isinstance(node.right, ast.Name) else \
            _placeholder(node.right, constants)
        if isinstance(node.op, ast.Div):
            return f"{_placeholder(node.left, constants)}/{right}"
        return f"{_placeholder(node.left, constants)} {_OPERATORS[type(node.op)]} {right}"
    if isinstance(node, ast.Constant):
        return str(node.value)
    return ast.unparse(node).replace("self.", "")


def _template(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The message a string expression builds, placeholders as ``{name}``; None when it is not one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                if isinstance(value.value, ast.Name) and value.value.id in constants:
                    parts.append(constants[value.value.id])
                else:
                    parts.append("{" + _placeholder(value.value, constants) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left, constants), _template(node.right, constants)
        return left + right if left is not None and right is not None else None
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, constants: dict[str, str], shown: Callable[[str], bool]) -> None:
        self.module, self.constants, self.shown = module, constants, shown
        self.scope: list[str] = []
        self.found: list[Error] = []

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Raise(self, node: ast.Raise) -> None:
        call = node.exc
        if isinstance(call, ast.Call) and call.args:
            name = _name(call.func)
            message = _template(call.args[0], self.constants)
            if name is not None and self.shown(name) and message is not None:
                dotted = "fastmaml." + self.module.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
                where = ".".join([dotted, *self.scope])
                self.found.append(Error(message, name, self.module, where, node.lineno))
        self.generic_visit(node)


def collect(source: Path = SOURCE) -> list[Error]:
    """Every one-line error under ``source``, in file then source order, each (message, place) once."""
    exceptions, project = shown_exceptions(), project_exceptions(source)

    def shown(name: str) -> bool:
        return is_shown(name, exceptions, project)

    trees = {path: ast.parse(path.read_text(), str(path)) for path in sorted(source.rglob("*.py"))}
    # a constant imported from another module: its value, where no two modules give the name different ones
    values: dict[str, set[str]] = {}
    for tree in trees.values():
        for name, value in _constants(tree).items():
            values.setdefault(name, set()).add(value)
    package = {name: found.pop() for name, found in values.items() if len(found) == 1}
    errors: list[Error] = []
    for path, tree in trees.items():
        collector = _Collector(path.relative_to(source).as_posix(), {**package, **_constants(tree)}, shown)
        collector.visit(tree)
        errors.extend(collector.found)
    seen: set[tuple[str, str]] = set()
    return [e for e in errors if (e.message, e.where) not in seen and not seen.add((e.message, e.where))]


def _code(text: str) -> str:
    """``text`` as an inline code span that survives backticks and a table's pipes."""
    text = " ".join(text.split()).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render(errors: list[Error] | None = None) -> str:
    """The whole troubleshooting page."""
    errors = collect() if errors is None else errors
    rows: dict[str, dict[str, list[Error]]] = {title: {} for _, title in TOPICS}  # topic -> message -> raises
    for error in errors:
        rows[error.topic].setdefault(error.message, []).append(error)
    lines = [INTRO.format(count=sum(map(len, rows.values())))]
    for title, messages in rows.items():
        if not messages:
            continue
        lines += [f"## {title}", "", "| Message | Fix | Raised by |", "| --- | --- | --- |"]
        for message, raises in messages.items():
            fix = _code(raises[0].fix) if raises[0].fix else "in the message"
            where = ", ".join(f"{_code(e.where)} ({e.exception})" for e in raises)
            lines.append(f"| {_code(message)} | {fix} | {where} |")
        lines.append("")
    return "\n".join([*lines, OUTRO])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is not current; write nothing")
    args = parser.parse_args(argv)
    page, shown = render(), PAGE.relative_to(ROOT) if PAGE.is_relative_to(ROOT) else PAGE
    if args.check:
        current = PAGE.is_file() and PAGE.read_text() == page
        print(f"{shown} is {'current' if current else f'out of date; run {COMMAND}'}")
        return 0 if current else 1
    PAGE.write_text(page)
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
