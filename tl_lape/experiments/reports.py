"""Writing results for people: the neuron-set summary and report folders.

Every report object of tl_lape (:class:`~tl_lape.experiments.evaluation.EvaluationReport`,
:class:`~tl_lape.experiments.steering.SteeringReport`) has ``to_dict``, ``to_markdown`` and
``figures``; :func:`write_report` turns one into files. Each file is written atomically, so a
reader never sees half of one.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from tl_lape.formats import atomic_path, tagged_json_text
from tl_lape.html import markdown_html, neurons_html, page, png_img, stats_html
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

__all__ = [
    "REPORT_JSON_VERSION",
    "Report",
    "format_summary",
    "report_page",
    "save_figure",
    "write_report",
    "write_text",
]

#: The version of a report's JSON file (``<stem>.json``), tagged ``"tl_lape.<class name>"``.
REPORT_JSON_VERSION = 1


@runtime_checkable
class Report(Protocol):
    """What :func:`write_report` needs of a report."""

    def to_dict(self) -> dict[str, Any]: ...

    def to_markdown(self) -> str: ...

    def figures(self) -> dict[str, Any]: ...


def format_summary(neurons: LanguageNeurons, *, stats: ActivationStats | None = None) -> str:
    """A Markdown summary of a neuron set: counts per language, layer spread, overlaps.

    Args:
        neurons: A :class:`~tl_lape.neurons.LanguageNeurons`.
        stats: The :class:`~tl_lape.stats.ActivationStats` it came from, to report tokens.

    Returns:
        Markdown text with two tables.

    Example:
        >>> neurons = LanguageNeurons.from_indices(
        ...     {"en": {0: [1, 2]}, "fr": {0: [2], 2: [5]}}, n_layers=3, d_mlp=8
        ... )
        >>> print(format_summary(neurons).splitlines()[0])
        Selected 3 of 24 MLP neurons (12.50%) in 3 layers.
    """
    counts = neurons.counts()
    per_layer = neurons.counts_per_layer()  # [lang, n_layers]
    n_layers = neurons.n_layers
    third = max(1, n_layers // 3)
    union = int(neurons.union().sum())  # a LapeError here if the width is unknown
    total_neurons = neurons.n_layers * cast(int, neurons.d_mlp)
    lines = [
        f"Selected {union:,} of {total_neurons:,} MLP neurons "
        f"({100 * union / total_neurons:.2f}%) in {n_layers} layers.",
        "",
        "| language | tokens | neurons | bottom third | middle | top third |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, lang in enumerate(neurons.languages):
        row = per_layer[k]
        bottom = int(row[:third].sum())
        top = int(row[n_layers - third :].sum())
        middle = int(row.sum()) - bottom - top
        tokens = "-"
        if stats is not None and lang in stats.languages:
            tokens = f"{int(stats.n_tokens[stats.languages.index(lang)]):,}"
        lines.append(f"| {lang} | {tokens} | {counts[lang]} | {bottom} | {middle} | {top} |")
    jaccard = neurons.jaccard()
    overlap = neurons.overlap()
    pairs = []
    langs = list(neurons.languages)
    for i in range(len(langs)):
        for j in range(i + 1, len(langs)):
            pairs.append((float(jaccard[i, j]), int(overlap[i, j]), langs[i], langs[j]))
    pairs.sort(key=lambda item: (-item[0], item[2], item[3]))
    lines += ["", "| pair | shared neurons | Jaccard |", "| --- | ---: | ---: |"]
    for jac, shared, a, b in pairs[:5]:
        lines.append(f"| {a}-{b} | {shared} | {jac:.3f} |")
    return "\n".join(lines)


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure atomically, in the format of ``path``'s suffix (png default)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(
    report: Report, out: Path, stem: str, *, markdown: bool = True, files: list[str] | None = None
) -> str:
    """Write a report's figures, ``<stem>.json`` and (with ``markdown``) ``<stem>.md`` to ``out``.

    The JSON file is tagged (:func:`~tl_lape.formats.tagged_json_text`: ``format``
    ``"tl_lape.<class name>"``, :data:`REPORT_JSON_VERSION`, a checksum), so
    :meth:`~tl_lape.experiments.evaluation.EvaluationReport.load` can verify it. Each file is
    written atomically; the names written are appended to ``files`` if given.
    The command line passes a temporary folder (see :func:`tl_lape.formats.atomic_dir`).

    Returns:
        The report as Markdown.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in report.figures().items():
        save_figure(fig, out / f"{name}.png")
        written.append(f"{name}.png")
    tag = f"tl_lape.{type(report).__name__}"
    write_text(
        out / f"{stem}.json",
        tagged_json_text(report.to_dict(), tag=tag, version=REPORT_JSON_VERSION),
    )
    written.append(f"{stem}.json")
    text = str(report.to_markdown())
    if markdown:
        write_text(out / f"{stem}.md", text)
        written.append(f"{stem}.md")
    if files is not None:
        files.extend(written)
    return text


def report_page(
    folder: Path,
    *,
    title: str,
    intro: str,
    neurons: LanguageNeurons,
    stats: ActivationStats | None = None,
    sections: Sequence[str] = (),
    files: Sequence[str] = (),
    views: Sequence[tuple[str, str]] = (),
) -> str:
    """One self-contained HTML page of a report folder: the introduction, the neuron set and
    (when given) statistics views, every PNG of ``files`` inline, the Markdown ``sections``
    and links to the data files; ``views`` adds ``(heading, html)`` sections such as neuron
    cards. Write it with :func:`write_text` beside ``summary.md``."""
    figures = [name for name in files if name.endswith(".png")]
    data = [name for name in files if not name.endswith(".png")]
    parts = [
        ("Summary", markdown_html(intro)),
        ("Neuron set", neurons_html(neurons)),
    ]
    if stats is not None:
        parts.append(("Statistics", stats_html(stats)))
    if figures:
        images = "".join(
            f"<figure>{png_img((folder / name).read_bytes(), name)}"
            f"<figcaption>{name}</figcaption></figure>"
            for name in figures
        )
        parts.append(("Figures", images))
    for section in sections:
        first, _, rest = section.strip().partition("\n")
        heading = first.lstrip("#").strip() if first.startswith("#") else "Results"
        parts.append((heading, markdown_html(rest if first.startswith("#") else section)))
    parts.extend(views)
    links = "".join(f'<li><a href="{name}">{name}</a></li>' for name in data)
    parts.append(("Data files", f"<ul>{links}</ul>"))
    return page(title, parts)
