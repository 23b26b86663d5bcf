"""Griffe extension: fastmaml's docstrings title their runnable example ``Example:`` (STYLE.md); griffe's
Google parser knows only ``Examples:`` as the section whose ``>>>`` lines render as code. Read the one as
the other, so every example shows as a highlighted code block (nothing in the source changes)."""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
