"""Griffe extension: read fastmaml's docstrings as the reference renders them (nothing in the source changes).

- Their runnable example is titled ``Example:`` (STYLE.md); griffe's Google parser knows only ``Examples:``
  as the section whose ``>>>`` lines render as code. The one is read as the other.
- Sphinx roles (``:class:`TaskBatch```, ``:func:`~fastmaml.core.rules.sgd```) would show as typed; they
  are read as code spans (with ``~``, the last component only), as Markdown shows ``double backticks``.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class ExampleSections(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_role, EXAMPLE.sub(r"\1Examples:", obj.docstring.value))
