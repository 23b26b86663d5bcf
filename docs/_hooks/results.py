"""mkdocs hook: ``docs/results.md`` shows ``benchmarks/RESULTS.md``, the one results document.

A line ``--8<-- "benchmarks/RESULTS.md"`` in results.md is replaced by that file (paths from the repository
root). Its relative links point at files beside it in ``benchmarks/`` that the site does not hold (scripts,
plots), so each becomes its text followed by the repository path in code: no broken link in ``--strict``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', re.M)
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _relink(text: str, folder: str) -> str:
    def replace(match: re.Match) -> str:
        image, label, target = match.groups()
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return match.group(0)
        path = posixpath.normpath(posixpath.join(folder, target.split("#")[0]))
        return f"{label or 'plot'} (`{path}`)" if image else f"{label} (`{path}`)"

    return LINK.sub(replace, text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "results.md":
        return markdown
    root = Path(config["config_file_path"]).parent

    def include(match: re.Match) -> str:
        relative = match.group(1)
        text = (root / relative).read_text(encoding="utf-8")
        return _relink(text, posixpath.dirname(relative))

    return INCLUDE.sub(include, markdown)
