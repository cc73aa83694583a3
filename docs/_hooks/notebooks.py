"""MkDocs hook: publish notebooks/ as the Tutorials section and keep every page offline.

The tutorials live in the repository's ``notebooks/`` folder (where CI executes them), not in
``docs/``; this hook adds them to the site as ``notebooks/<name>.ipynb`` before mkdocs-jupyter
converts them. The committed notebooks carry no outputs; to publish them with outputs, execute
copies into a folder named ``notebooks`` and point ``$TL_LAPE_DOCS_NOTEBOOKS`` at it (``make
docs`` does this). The hook then

- puts a download link to the ``.ipynb`` file at the top of each tutorial page;
- rewrites the links between notebooks (``02_x.ipynb``) and from notebooks to docs pages
  (``../howto/x.md``), which work in Jupyter, into the site's URLs;
- removes the script tags that nbconvert adds to load MathJax from a CDN (the tutorials' text
  has no formulas);
- and fails a strict build if any page still loads a script or style sheet from the network.

Formulas are MathML produced at build time by markdown-katex. KaTeX marks blackboard-bold and
bold letters with ``mathvariant``, which MathML Core browsers (Chromium) ignore; the hook
replaces those letters by their Unicode mathematical forms (``ℝ``, ``𝟏``), which every browser
shows.
"""

import logging
import os
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.notebooks")

_REPO = Path(__file__).resolve().parents[2]
_NOTEBOOKS = _REPO / "notebooks"
_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_REMOTE = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]+\"[^>]*>")
_MATHVARIANT = re.compile(r'<m([in]) mathvariant="(double-struck|bold)">([A-Za-z0-9])</m\1>')
_DOUBLE_STRUCK_SPECIAL = {"C": "ℂ", "H": "ℍ", "N": "ℕ", "P": "ℙ", "Q": "ℚ", "R": "ℝ", "Z": "ℤ"}
_HREF = re.compile(r'href="(?!https?:|#|/)([^"#]+?)\.(ipynb|md)(#[^"]*)?"')


def _executed_dir():
    """The folder of executed copies named by $TL_LAPE_DOCS_NOTEBOOKS, or None."""
    value = os.environ.get("TL_LAPE_DOCS_NOTEBOOKS")
    if not value:
        return None
    folder = Path(value).resolve()
    if folder.name != "notebooks" or not folder.is_dir():
        raise PluginError(
            f"TL_LAPE_DOCS_NOTEBOOKS must name an existing folder called 'notebooks' "
            f"(executed copies of the tutorials), got {value!r}"
        )
    return folder


@event_priority(100)  # before mkdocs-jupyter's on_files, so that it converts these files
def on_files(files, config):
    executed = _executed_dir()
    for path in sorted(_NOTEBOOKS.glob("*.ipynb")):
        # An executed copy (with outputs) if one was made, else the committed notebook.
        source = path
        if executed is not None and (executed / path.name).is_file():
            source = executed / path.name
        else:
            if executed is not None:
                log.warning("No executed copy of %s in %s", path.name, executed)
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(source.parent.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def _is_notebook_page(page):
    src = page.file.src_uri
    return src.startswith("notebooks/") and src.endswith(".ipynb")


def _site_link(match):
    target, ext, anchor = match.group(1), match.group(2), match.group(3) or ""
    if target.startswith("../"):  # a docs page, relative to notebooks/ in the repository
        target = target[3:]
        if target.startswith("docs/"):
            target = target[5:]
        return f'href="../../{target}/{anchor}"'
    if ext == "ipynb":  # another notebook: its page is a sibling folder
        return f'href="../{target}/{anchor}"'
    return match.group(0)


def _math_letter(match):
    tag, variant, char = match.group(1), match.group(2), match.group(3)
    if char.isdigit():
        base = 0x1D7D8 if variant == "double-struck" else 0x1D7CE
        return f"<m{tag}>{chr(base + int(char))}</m{tag}>"
    if variant == "double-struck" and char in _DOUBLE_STRUCK_SPECIAL:
        return f"<mi>{_DOUBLE_STRUCK_SPECIAL[char]}</mi>"
    upper, lower = (0x1D538, 0x1D552) if variant == "double-struck" else (0x1D400, 0x1D41A)
    offset = ord(char) - (ord("A") if char.isupper() else ord("a"))
    return f"<mi>{chr((upper if char.isupper() else lower) + offset)}</mi>"


def on_page_content(html, page, config, files):
    html = _MATHVARIANT.sub(_math_letter, html)
    if not _is_notebook_page(page):
        return html
    html = _HREF.sub(_site_link, html)
    # Code cells need the width: hide the right-hand table of contents on tutorial pages.
    page.meta.setdefault("hide", ["toc"])
    name = page.file.src_uri.rsplit("/", 1)[-1]
    # mkdocs-jupyter (include_source: true) copies the notebook next to the page.
    link = f'<p class="nb-download"><a href="{name}" download>Download this notebook</a></p>'
    return link + html


def on_post_page(output, page, config):
    output = _MATHJAX.sub("", output)
    for match in _REMOTE.finditer(output):
        log.warning("Page %s loads a remote resource: %s", page.file.src_uri, match.group(0))
    return output
