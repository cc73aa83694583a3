"""Griffe extension used by the docs build: read tl_lape's docstrings as the library writes them.

The library's docstrings are Google style with Sphinx cross-reference roles. Two small
rewrites make them render well in mkdocstrings without changing the source:

- ``Example:`` (the singular, common in Google style) becomes ``Examples:``, the section that
  griffe parses into text and highlighted ``>>>`` code (the singular would be read as a plain
  admonition, and its ``>>>`` lines as Markdown block quotes);
- Sphinx roles such as ``:func:`~tl_lape.interventions.hooks.steering_hooks``` become inline code
  (``steering_hooks``).
"""

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class ExampleSections(griffe.Extension):
    """Rewrite each docstring once, when its object is loaded."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is None:
            return
        value = _EXAMPLE.sub(r"\1Examples:", docstring.value)
        docstring.value = _ROLE.sub(_role, value)
