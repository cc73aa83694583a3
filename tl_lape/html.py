"""Small, dependency-free HTML for notebooks and the report page.

The rich representations (``_repr_html_``) of tl_lape's objects and the report page are built
from these few pieces: escaped text, tables whose cells can carry a colour scale, and inline
SVG bar charts. Everything is inline (no script, no external file), so a fragment renders the
same in Jupyter, in the documentation and in a saved ``report.html``.
"""

import base64
import html
import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "bar_chart",
    "colour",
    "document",
    "escape",
    "fragment",
    "layer_chart",
    "markdown_html",
    "neurons_html",
    "page",
    "stats_html",
    "table",
    "text_colour",
]

#: The style every fragment carries (scoped by the ``tl-lape`` class).
STYLE = (
    "<style>"
    ".tl-lape{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;"
    "color:#1f2328;line-height:1.4}"
    ".tl-lape table{border-collapse:collapse;margin:4px 0 8px 0}"
    ".tl-lape th,.tl-lape td{border:1px solid #d0d7de;padding:2px 8px;text-align:right}"
    ".tl-lape th{background:#f6f8fa;font-weight:600}"
    ".tl-lape td.l,.tl-lape th.l{text-align:left}"
    ".tl-lape .title{font-weight:600;font-size:14px;margin-bottom:2px}"
    ".tl-lape .muted{color:#656d76}"
    "</style>"
)


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML."""
    return html.escape(str(value), quote=True)


def colour(value: float, low: float, high: float, *, diverging: bool = False) -> str:
    """A background colour for ``value`` on ``[low, high]``: white to blue, or blue-white-red
    (``diverging``, white at 0). Non-finite values are grey.

    Example:
        >>> colour(1.0, 0.0, 1.0)
        'rgb(33,102,172)'
    """
    if not math.isfinite(value):
        return "rgb(230,230,230)"
    if diverging:
        span = max(abs(low), abs(high)) or 1.0
        t = max(-1.0, min(1.0, value / span))
        end = (178, 24, 43) if t > 0 else (33, 102, 172)
        t = abs(t)
    else:
        span = (high - low) or 1.0
        t = max(0.0, min(1.0, (value - low) / span))
        end = (33, 102, 172)
    r, g, b = (round(255 + (c - 255) * t) for c in end)
    return f"rgb({r},{g},{b})"


def text_colour(background: str) -> str:
    """A readable text colour (white or near-black) on a :func:`colour` background.

    Example:
        >>> text_colour(colour(1.0, 0.0, 1.0)), text_colour(colour(0.0, 0.0, 1.0))
        ('#fff', '#1f2328')
    """
    r, g, b = (int(x) for x in background[4:-1].split(","))
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else "#1f2328"


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    shade: Sequence[Sequence[float | None]] | None = None,
    scale: tuple[float, float] | None = None,
    diverging: bool = False,
    left: int = 1,
) -> str:
    """An HTML table; ``shade[i][j]`` (a number, or None) colours cell ``(i, j)`` on ``scale``.

    The first ``left`` columns are left-aligned labels; the others are right-aligned.
    """
    head = "".join(
        f'<th class="{"l" if j < left else ""}">{escape(h)}</th>' for j, h in enumerate(header)
    )
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, value in enumerate(row):
            style = ""
            tint = shade[i][j] if shade is not None and j < len(shade[i]) else None
            if tint is not None and scale is not None:
                bg = colour(tint, *scale, diverging=diverging)
                style = f' style="background:{bg};color:{text_colour(bg)}"'
            css = ' class="l"' if j < left else ""
            cells.append(f"<td{css}{style}>{escape(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    errors: Sequence[tuple[float, float] | None] | None = None,
    width: int = 360,
    bar_height: int = 14,
    unit: str = "",
) -> str:
    """A horizontal bar chart as inline SVG, with optional interval whiskers ``(low, high)``."""
    finite = [v for v in values if math.isfinite(v)]
    limits = [x for e in (errors or []) if e is not None for x in e if math.isfinite(x)]
    top = max([0.0, *finite, *limits]) or 1.0
    bottom = min([0.0, *finite, *limits])
    label_w, pad = 70, 4
    plot_w = width - label_w - 60
    height = len(values) * (bar_height + pad) + pad

    def x(v: float) -> float:
        return label_w + (v - bottom) / (top - bottom) * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" style="font:11px system-ui,sans-serif">'
    ]
    zero = x(0.0)
    for k, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = pad + k * (bar_height + pad)
        parts.append(
            f'<text x="{label_w - 4}" y="{y + bar_height - 3}" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        if math.isfinite(value):
            left, right = sorted((zero, x(value)))
            parts.append(
                f'<rect x="{left:.1f}" y="{y}" width="{max(right - left, 0.5):.1f}" '
                f'height="{bar_height}" fill="#4a7ab5"><title>{escape(label)}: '
                f"{value:.4g}{escape(unit)}</title></rect>"
            )
            parts.append(
                f'<text x="{max(right, zero) + 3:.1f}" y="{y + bar_height - 3}">'
                f"{value:.3g}{escape(unit)}</text>"
            )
        err = errors[k] if errors is not None else None
        if err is not None and all(math.isfinite(e) for e in err):
            mid = y + bar_height / 2
            parts.append(
                f'<line x1="{x(err[0]):.1f}" x2="{x(err[1]):.1f}" y1="{mid}" y2="{mid}" '
                'stroke="#1f2328" stroke-width="1.2"/>'
            )
    parts.append(
        f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="0" y2="{height}" stroke="#8c959f"/></svg>'
    )
    return "".join(parts)


def layer_chart(counts: Sequence[Sequence[int]], languages: Sequence[str]) -> str:
    """Neurons per layer and language as small inline-SVG columns (one row per language)."""
    n_layers = len(counts[0]) if counts else 0
    peak = max((max(row) for row in counts), default=0) or 1
    cell = max(4, min(24, 240 // max(n_layers, 1)))
    row_h, label_w = 22, 30
    width = max(label_w + n_layers * cell + 4, 150)
    height = len(languages) * row_h + 14
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'role="img" style="font:10px system-ui,sans-serif">'
    ]
    for k, lang in enumerate(languages):
        base = (k + 1) * row_h
        parts.append(f'<text x="0" y="{base - 4}">{escape(lang)}</text>')
        for layer, n in enumerate(counts[k]):
            h = (row_h - 4) * n / peak
            parts.append(
                f'<rect x="{label_w + layer * cell}" y="{base - h:.1f}" width="{cell - 1}" '
                f'height="{h:.1f}" fill="#4a7ab5"><title>{escape(lang)}, layer {layer}: '
                f"{n}</title></rect>"
            )
    parts.append(
        f'<text x="{label_w}" y="{height - 2}" fill="#656d76">layer 0 → {n_layers - 1}</text></svg>'
    )
    return "".join(parts)


def fragment(title: str, *body: str, note: str = "") -> str:
    """A titled block of HTML with the shared style."""
    extra = f'<div class="muted">{escape(note)}</div>' if note else ""
    return f'{STYLE}<div class="tl-lape"><div class="title">{escape(title)}</div>{extra}' + (
        "".join(body) + "</div>"
    )


def neurons_html(neurons: Any) -> str:
    """The rich view of a :class:`~tl_lape.neurons.LanguageNeurons`: counts per language and
    layer band, a per-layer chart, and the largest overlaps."""
    counts = neurons.counts()
    per_layer = neurons.counts_per_layer().tolist()
    n_layers = neurons.n_layers
    third = max(1, n_layers // 3)
    rows = []
    for k, lang in enumerate(neurons.languages):
        row = per_layer[k]
        bottom, top = sum(row[:third]), sum(row[n_layers - third :])
        rows.append([lang, counts[lang], bottom, sum(row) - bottom - top, top])
    if neurons.d_mlp is None:
        width = "width unknown"
    else:
        union = int(neurons.union().sum())
        total = n_layers * neurons.d_mlp
        width = (
            f"{neurons.d_mlp:,} neurons per layer; {union:,} selected ({100 * union / total:.2f}%)"
        )
    parts = [table(["language", "neurons", "bottom third", "middle", "top third"], rows)]
    parts.append(layer_chart(per_layer, list(neurons.languages)))
    if neurons.n_languages > 1:
        overlap = neurons.overlap().tolist()
        pairs = sorted(
            (
                (overlap[i][j], neurons.languages[i], neurons.languages[j])
                for i in range(neurons.n_languages)
                for j in range(i + 1, neurons.n_languages)
            ),
            reverse=True,
        )[:5]
        parts.append(table(["pair", "shared neurons"], [[f"{a}-{b}", n] for n, a, b in pairs]))
    return fragment("LanguageNeurons", *parts, note=f"{n_layers} layers, {width}")


def stats_html(stats: Any) -> str:
    """The rich view of :class:`~tl_lape.stats.ActivationStats`: tokens per language and a
    summary of the firing rates (mean, and the share of neurons firing on most tokens)."""
    rates = stats.probabilities  # n_layers d_mlp lang
    rows = []
    for k, lang in enumerate(stats.languages):
        r = rates[..., k]
        rows.append(
            [
                lang,
                f"{int(stats.n_tokens[k]):,}",
                f"{float(r.mean()):.3f}",
                f"{float((r > 0.5).double().mean()):.3f}",
                f"{float((r == 0).double().mean()):.3f}",
            ]
        )
    header = ["language", "tokens", "mean firing rate", "share > 0.5", "share never"]
    model = stats.metadata.get("model_name", "a model")
    note = f"{model}: {stats.n_layers} layers x {stats.d_mlp:,} MLP neurons"
    return fragment("ActivationStats", table(header, rows), note=note)


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
]


_BLOCK_START = re.compile(r"#{1,6} |\s*\||\s*[-*] ")


def _inline(text: str) -> str:
    out = escape(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(line: str) -> list[str]:
    body = line.strip().strip("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def markdown_html(text: str) -> str:
    r"""The Markdown tl_lape's reports write (headings, pipe tables, paragraphs, lists, inline
    code and bold) as HTML. Everything else is shown as escaped text.

    Example:
        >>> html = markdown_html("## A\n\n| x | y |\n| --- | ---: |\n| 1 | `2` |")
        >>> html[:50]
        '<h2>A</h2><table><thead><tr><th class="l">x</th><t'
        >>> html[-64:]
        '<td class="l">1</td><td><code>2</code></td></tr></tbody></table>'
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        if (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and set(lines[i + 1]) <= set("|-: ")
        ):
            header = _cells(line)
            align = ["l" if not c.strip().endswith(":") else "" for c in _cells(lines[i + 1])]
            i += 2
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head = "".join(
                f'<th class="{a}">{_inline(h)}</th>' if a else f"<th>{_inline(h)}</th>"
                for h, a in zip(header, align, strict=False)
            )
            body = "".join(
                "<tr>"
                + "".join(
                    f'<td class="{a}">{_inline(c)}</td>' if a else f"<td>{_inline(c)}</td>"
                    for c, a in zip(row, align, strict=False)
                )
                + "</tr>"
                for row in rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            continue
        if re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                item = re.sub(r"^\s*[-*] ", "", lines[i])
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        # A paragraph runs to the next block; its first line is always taken, so a line that
        # looks like a block but is not one (a "|" line without a table rule) cannot stall.
        paragraph = [line.strip()]
        i += 1
        while i < len(lines) and lines[i].strip() and not _BLOCK_START.match(lines[i]):
            paragraph.append(lines[i].strip())
            i += 1
        out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "".join(out)


def png_img(data: bytes, alt: str) -> str:
    """A PNG inline as a base64 ``<img>``."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{encoded}" style="max-width:100%">'


def document(title: str, body: str) -> str:
    """``body`` (fragments) as a whole self-contained HTML document, with no table of contents.

    Example:
        >>> document("t", "<p>x</p>")[-28:]
        '<body><p>x</p></body></html>'
    """
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head><body>{body}</body></html>"
    )


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A whole self-contained HTML document: a title, a table of contents and the sections
    ``(heading, html)``, each an ``<section>`` with an ``id``."""
    toc = "".join(
        f'<li><a href="#s{k}">{escape(heading)}</a></li>' for k, (heading, _) in enumerate(sections)
    )
    body = "".join(
        f'<section id="s{k}"><h2>{escape(heading)}</h2>{content}</section>'
        for k, (heading, content) in enumerate(sections)
    )
    css = STYLE.replace(".tl-lape{", ".tl-lape{max-width:1000px;margin:16px auto;padding:0 16px;")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>{css}</head>"
        f'<body><main class="tl-lape"><h1>{escape(title)}</h1><nav><ul>{toc}</ul></nav>'
        f"{body}</main></body></html>"
    )
