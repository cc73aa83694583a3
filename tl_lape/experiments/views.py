"""Token views: look at which tokens of a text a language's neurons fire on.

- :func:`token_view`: one text, each token coloured by how many of a language's neurons fire
  on it (``hook_pre > 0`` at the set's neurons, the paper's firing criterion; in a gated MLP
  ``hook_pre`` is the gate's pre-activation) or by their summed activation
  ``act_fn(hook_pre)``. Hovering a token shows the token, its value, the text's identified
  language and the neurons (``layer.index``) that fire most on it.
- :func:`token_views_side_by_side`: parallel paragraphs of several languages in a grid, each
  coloured by its own language's neurons (or all by one chosen language's), on one colour scale.

Each view is computed in one forward pass per text, with hooks only on the layers the neuron
set uses (the pass stops after the last of them), under ``torch.inference_mode``; a hook keeps
only the set's columns of ``hook_pre``, never a full activation. The result shows itself in a
notebook (``_repr_html_``) and as HTML (``to_html``): with CircuitsVis'
``circuitsvis.tokens.colored_tokens`` when it is installed (``pip install 'tl-lape[views]'``;
it inlines its ~1.3 MB script so the view also works offline), else, or with
``backend="html"``, as plain inline HTML with native tooltips and no script.

Example (on a tiny model and its neuron set):
    >>> view = token_view(model, "Le chat dort.", neurons, "fr", backend="html", identify=False)
    >>> len(view.tokens) == len(view.values) == len(view.token_ids)
    True
    >>> view.to_html().count('class="tok"') == len(view.tokens)
    True
"""

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from tl_lape._adapter import ModelAdapter, adapt
from tl_lape.checks import check_choice, check_positive_int
from tl_lape.errors import LapeError
from tl_lape.html import colour, document, escape, fragment, text_colour
from tl_lape.judging.identification import LanguageIdentifier
from tl_lape.neurons import LanguageNeurons

__all__ = [
    "Backend",
    "Measure",
    "TokenView",
    "TokenViewGrid",
    "token_view",
    "token_views_side_by_side",
]

#: What colours a token: ``"count"``, the number of the set's neurons firing on it
#: (``hook_pre > 0``), or ``"activation"``, their summed ``act_fn(hook_pre)``.
Measure = Literal["count", "activation"]
#: How a view is drawn: ``"circuitsvis"`` (needs the optional package), ``"html"`` (inline,
#: no script) or ``"auto"`` (CircuitsVis when installed, else HTML).
Backend = Literal["auto", "html", "circuitsvis"]

MEASURES: tuple[Measure, ...] = ("count", "activation")
BACKENDS: tuple[Backend, ...] = ("auto", "html", "circuitsvis")

_STYLE = (
    "<style>"
    ".tl-lape .tokens{white-space:pre-wrap;word-break:break-word;line-height:1.9;"
    "font-size:14px;margin:4px 0}"
    ".tl-lape .tok{border-radius:2px;padding:1px 0;box-shadow:inset -1px 0 #fff}"
    ".tl-lape .tok:hover{outline:1px solid #1f2328}"
    ".tl-lape .grid{display:grid;gap:14px;align-items:start}"
    ".tl-lape .cell{border:1px solid #d0d7de;border-radius:6px;padding:6px 10px}"
    ".tl-lape .head{font-weight:600}"
    ".tl-lape .legend{display:inline-block;width:120px;height:10px;vertical-align:middle;"
    "border:1px solid #d0d7de;margin:0 4px}"
    "</style>"
)


@dataclass(frozen=True)
class TokenView:
    """A text's tokens and how strongly one language's neurons fire on each.

    Attributes:
        text: The text.
        language: The language whose neurons colour it.
        measure: ``"count"`` or ``"activation"`` (see :data:`Measure`).
        token_ids: The text's token ids as run (BOS, when the model uses one, not included).
        tokens: The text of each token (their concatenation is the text, up to truncation).
        values: Per token, the number of the language's neurons firing on it (``"count"``)
            or their summed ``act_fn(hook_pre)`` (``"activation"``).
        top_neurons: Per token, up to a few ``(layer, index, activation)`` of the set's
            neurons firing on it, largest ``act_fn(hook_pre)`` first.
        n_neurons: The size of the language's neuron set.
        identified: The text's language as :class:`~tl_lape.judging.identification.
            LanguageIdentifier` judges it among the set's languages (None if not asked or
            unavailable).
        label: A name for the text (its language in a side-by-side grid), or "".
        scale: ``(low, high)`` of the colour scale; None for ``(0, max(values))``.
        backend: How :meth:`to_html` draws it (see :data:`Backend`).
        truncated: Whether the text was cut to ``max_tokens``.
        metadata: The model's name and the view's settings.
    """

    text: str
    language: str
    measure: Measure
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    values: tuple[float, ...]
    top_neurons: tuple[tuple[tuple[int, int, float], ...], ...]
    n_neurons: int
    identified: str | None = None
    label: str = ""
    scale: tuple[float, float] | None = None
    backend: Backend = "auto"
    truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def color_scale(self) -> tuple[float, float]:
        """The colour scale ``(low, high)``: :attr:`scale`, or 0 to the largest value."""
        if self.scale is not None:
            return self.scale
        finite = [v for v in self.values if math.isfinite(v)]
        return (min(0.0, *finite) if finite else 0.0, max([0.0, *finite]) or 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {
            "text": self.text,
            "language": self.language,
            "measure": self.measure,
            "token_ids": list(self.token_ids),
            "tokens": list(self.tokens),
            "values": list(self.values),
            "top_neurons": [[list(n) for n in per] for per in self.top_neurons],
            "n_neurons": self.n_neurons,
            "identified": self.identified,
            "label": self.label,
            "truncated": self.truncated,
            "metadata": dict(self.metadata),
        }

    def to_html(self, *, backend: str | None = None, standalone: bool = False) -> str:
        """The view as HTML: a fragment, or a whole document (``standalone``).

        Args:
            backend: Overrides :attr:`backend` (``"auto"``, ``"html"`` or ``"circuitsvis"``).
            standalone: A complete ``<!DOCTYPE html>`` page, e.g. to save to a file.
        """
        use = _resolve_backend(self.backend if backend is None else backend)
        body = fragment(self._title(), _STYLE, self._body(use), note=self._note())
        return document(self._title(), body) if standalone else body

    def _repr_html_(self) -> str:
        return self.to_html()

    def _title(self) -> str:
        what = "neurons firing" if self.measure == "count" else "summed activation"
        return f"Token view: {self.language} {what}" + (f" ({self.label})" if self.label else "")

    def _note(self) -> str:
        low, high = self.color_scale()
        parts = [
            f"{self.n_neurons} {self.language} neurons",
            f"{len(self.tokens)} tokens" + (" (truncated)" if self.truncated else ""),
            f"colour scale {low:.3g} to {high:.3g}",
        ]
        if self.identified is not None:
            parts.append(f"text identified as {self.identified}")
        return "; ".join(parts)

    def _body(self, backend: str) -> str:
        if backend == "circuitsvis":
            return _circuitsvis_html(self)
        return _tokens_html(self)


@dataclass(frozen=True)
class TokenViewGrid:
    """Several :class:`TokenView` side by side (one column each), on one colour scale.

    Attributes:
        views: The views, in the order of the texts given.
        columns: Views per row of the grid.
    """

    views: tuple[TokenView, ...]
    columns: int = 2

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values."""
        return {"views": [v.to_dict() for v in self.views], "columns": self.columns}

    def to_html(self, *, backend: str | None = None, standalone: bool = False) -> str:
        """The grid as HTML: a fragment, or a whole document (``standalone``)."""
        cells = []
        shared = len({v.color_scale() for v in self.views}) == 1
        for view in self.views:
            use = _resolve_backend(view.backend if backend is None else backend)
            head = escape(view.label or view.language)
            sub = f"coloured by {view.language} neurons ({view.n_neurons})"
            if view.identified is not None:
                sub += f"; identified as {view.identified}"
            cells.append(
                f'<div class="cell"><div class="head">{head}</div>'
                f'<div class="muted">{escape(sub)}</div>'
                + ("" if shared else _legend(*view.color_scale()))
                + f"{view._body(use)}</div>"
            )
        n = max(1, min(self.columns, len(self.views)))
        grid = (
            f'<div class="grid" style="grid-template-columns:repeat({n},minmax(0,1fr))">'
            + "".join(cells)
            + "</div>"
        )
        first = self.views[0] if self.views else None
        measure = first.measure if first is not None else "count"
        what = "neurons firing per token" if measure == "count" else "summed activation"
        low, high = first.color_scale() if first is not None else (0.0, 1.0)
        if shared:
            note, legend = f"{what}; one colour scale, {low:.3g} to {high:.3g}", _legend(low, high)
        else:
            note, legend = f"{what}; each text on its own colour scale", ""
        title = "Token views side by side"
        body = fragment(title, _STYLE, legend, grid, note=note)
        return document(title, body) if standalone else body

    def _repr_html_(self) -> str:
        return self.to_html()


def token_view(
    model: Any,
    text: str,
    neurons: LanguageNeurons,
    language: str,
    *,
    measure: str = "count",
    backend: str = "auto",
    top_neurons: int = 3,
    identify: bool = True,
    max_tokens: int = 512,
    scale: tuple[float, float] | None = None,
    label: str = "",
) -> TokenView:
    """Colour each token of ``text`` by how ``language``'s neurons fire on it.

    Args:
        model: A TransformerLens model (``TransformerBridge`` or ``HookedTransformer``) with a
            tokenizer.
        text: The text (one paragraph reads best).
        neurons: A neuron set of this model.
        language: Whose neurons colour the tokens; one of ``neurons.languages``.
        measure: ``"count"``: the number of the language's neurons with ``hook_pre > 0`` on
            the token; ``"activation"``: the sum of their ``act_fn(hook_pre)``.
        backend: ``"auto"`` (CircuitsVis when installed, else HTML), ``"html"`` (inline, no
            script, tooltips with the top neurons) or ``"circuitsvis"``.
        top_neurons: Neurons listed per token on hover (the largest firing ones).
        identify: Identify the text's language among the set's languages (py3langid; skipped
            when it is not installed).
        max_tokens: Tokens shown at most; a longer text is cut (and the view says so).
        scale: ``(low, high)`` of the colour scale; default 0 to the largest value.
        label: A name for the text, shown in the title.

    Returns:
        A :class:`TokenView` (it shows itself in a notebook).

    Raises:
        LapeError: On an unknown language, measure or backend, an empty text, a set of another
            model, or ``backend="circuitsvis"`` without CircuitsVis.
    """
    adapter, measure_, backend_ = _check(
        model, neurons, language, measure, backend, top_neurons, max_tokens
    )
    _check_text(text, "text")
    lid = _identifier(tuple(neurons.languages)) if identify else None
    return _view(
        adapter,
        text,
        neurons,
        language,
        measure_,
        backend_,
        top_neurons,
        lid,
        max_tokens,
        scale,
        label,
    )


def token_views_side_by_side(
    model: Any,
    texts: Mapping[str, str],
    neurons: LanguageNeurons,
    *,
    language: str | None = None,
    measure: str = "count",
    backend: str = "auto",
    top_neurons: int = 3,
    identify: bool = True,
    max_tokens: int = 512,
    columns: int | None = None,
    shared_scale: bool | None = None,
) -> TokenViewGrid:
    """Parallel paragraphs of several languages side by side, each coloured by its own
    language's neurons (or all by ``language``'s).

    Args:
        model: A TransformerLens model with a tokenizer.
        texts: ``{language: text}``, e.g. the same paragraph in French and Chinese.
        neurons: A neuron set of this model.
        language: Colour every text by this language's neurons; default each text's own (its
            key, which must then be one of ``neurons.languages``).
        measure: ``"count"`` or ``"activation"`` (see :func:`token_view`).
        backend: ``"auto"``, ``"html"`` or ``"circuitsvis"`` (see :func:`token_view`).
        top_neurons: Neurons listed per token on hover.
        identify: Identify each text's language.
        max_tokens: Tokens shown at most per text.
        columns: Texts per row of the grid; default all in one row (at most 3).
        shared_scale: One colour scale for all texts (0 to the largest value of any). Default:
            shared when every text is coloured by one ``language``'s neurons; each its own
            when each text has its own language's set (the sets differ in size, so their
            counts are not on one scale).

    Returns:
        A :class:`TokenViewGrid` (it shows itself in a notebook).

    Example:
        >>> grid = token_views_side_by_side(
        ...     model, {"fr": "Le chat dort.", "zh": "猫在睡觉。"}, neurons, identify=False
        ... )
        >>> [v.language for v in grid.views]
        ['fr', 'zh']
    """
    if not isinstance(texts, Mapping) or not texts:
        raise LapeError(
            f"texts must be a non-empty mapping {{language: text}}; received {texts!r:.80}"
        )
    for key, text in texts.items():
        _check_text(text, f"texts[{key!r}]")
    if columns is None:
        columns = min(len(texts), 3)
    check_positive_int(columns, "columns")
    which = {key: (language if language is not None else str(key)) for key in texts}
    for lang in dict.fromkeys(which.values()):
        adapter, measure_, backend_ = _check(
            model, neurons, lang, measure, backend, top_neurons, max_tokens
        )
    lid = _identifier(tuple(neurons.languages)) if identify else None
    views = [
        _view(
            adapter,
            text,
            neurons,
            which[key],
            measure_,
            backend_,
            top_neurons,
            lid,
            max_tokens,
            None,
            str(key),
        )
        for key, text in texts.items()
    ]
    if shared_scale is None:
        shared_scale = language is not None
    if shared_scale:
        low = min(v.color_scale()[0] for v in views)
        high = max(v.color_scale()[1] for v in views)
        views = [_with_scale(v, (low, high)) for v in views]
    return TokenViewGrid(tuple(views), columns)


# ============================================================================ computing


def _check(
    model: Any,
    neurons: Any,
    language: Any,
    measure: Any,
    backend: Any,
    top_neurons: Any,
    max_tokens: Any,
) -> tuple[ModelAdapter, Measure, Backend]:
    if not isinstance(neurons, LanguageNeurons):
        raise LapeError(
            f"neurons must be a LanguageNeurons; received {type(neurons).__name__} (load one "
            "with LanguageNeurons.load or select one with identify_language_neurons)"
        )
    if language not in neurons.languages:
        raise LapeError(
            f"language {language!r} is not in the neuron set; pass one of {list(neurons.languages)}"
        )
    measure = check_choice(measure, MEASURES, "measure")
    backend = check_choice(backend, BACKENDS, "backend")
    if backend == "circuitsvis" and _circuitsvis() is None:
        raise LapeError(
            "backend='circuitsvis' needs the optional circuitsvis package, which is not "
            "installed; pip install 'tl-lape[views]', or pass backend='html' (or 'auto')"
        )
    if not isinstance(top_neurons, int) or isinstance(top_neurons, bool) or top_neurons < 0:
        raise LapeError(f"top_neurons must be an int >= 0; received {top_neurons!r}")
    check_positive_int(max_tokens, "max_tokens")
    adapter = adapt(model)
    neurons.check_compatible(adapter.n_layers, adapter.d_mlp)
    return adapter, measure, backend


def _check_text(text: Any, name: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise LapeError(f"{name} must be a non-empty string; received {text!r:.80}")


@functools.lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...]) -> LanguageIdentifier | None:
    """A language identifier for the set's languages, or None if py3langid is missing or
    does not know one of them (identification is a courtesy of the view)."""
    try:
        return LanguageIdentifier(languages, open_set=False)
    except LapeError:
        return None


def _circuitsvis() -> Any:
    """The ``circuitsvis.tokens`` module, or None when CircuitsVis is not installed."""
    try:
        import circuitsvis.tokens as cv_tokens  # type: ignore[import-not-found]
    except ImportError:
        return None
    return cv_tokens


def _resolve_backend(backend: Any) -> str:
    backend = check_choice(backend, BACKENDS, "backend")
    if backend == "auto":
        return "circuitsvis" if _circuitsvis() is not None else "html"
    if backend == "circuitsvis" and _circuitsvis() is None:
        raise LapeError(
            "backend='circuitsvis' needs the optional circuitsvis package, which is not "
            "installed; pip install 'tl-lape[views]', or pass backend='html'"
        )
    return backend


def _pieces(adapter: ModelAdapter, text: str) -> tuple[list[int], list[str]]:
    """Token ids of ``text`` (no special tokens) and each token's text; the pieces
    concatenate to ``text``. A character split over several byte tokens goes to the first."""
    tokenizer = adapter.tokenizer
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [int(i) for i in enc["input_ids"]]
        offsets = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    except (TypeError, ValueError, NotImplementedError, KeyError):
        ids = [int(i) for i in adapter.encode(text).tolist()]
        return ids, _decoded_pieces(tokenizer, ids)
    pieces, done = [], 0
    for k, (_, end) in enumerate(offsets):
        end = len(text) if k == len(offsets) - 1 else max(end, done)
        pieces.append(text[done:end])
        done = end
    return ids, pieces


def _decoded_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text by decoding growing prefixes (for tokenizers without offsets)."""
    pieces, shown = [], ""
    for k in range(len(ids)):
        full = tokenizer.decode(ids[: k + 1])
        if "\ufffd" in full[len(shown) :] and k + 1 < len(ids):
            pieces.append("")  # part of a character that the next token completes
            continue
        pieces.append(full[len(shown) :] if full.startswith(shown) else tokenizer.decode([ids[k]]))
        shown = full
    return pieces


def _view(
    adapter: ModelAdapter,
    text: str,
    neurons: LanguageNeurons,
    language: str,
    measure: Measure,
    backend: Backend,
    top_neurons: int,
    lid: LanguageIdentifier | None,
    max_tokens: int,
    scale: tuple[float, float] | None,
    label: str,
) -> TokenView:
    ids, pieces = _pieces(adapter, text)
    n_ctx = adapter.n_ctx
    bos = adapter.bos_token_id
    limit = max_tokens if n_ctx is None else min(max_tokens, n_ctx - int(bos is not None))
    truncated = len(ids) > limit
    ids, pieces = ids[:limit], pieces[:limit]
    run_ids = ([bos] if bos is not None else []) + ids
    values, tops = _measure(adapter, run_ids, neurons, language, measure, top_neurons)
    skip = int(bos is not None)
    identified = lid(text) if lid is not None else None
    return TokenView(
        text=text,
        language=language,
        measure=measure,
        token_ids=tuple(ids),
        tokens=tuple(pieces),
        values=tuple(values[skip:]),
        top_neurons=tuple(tops[skip:]),
        n_neurons=neurons.counts()[language],
        identified=identified,
        label=label,
        scale=scale,
        backend=backend,
        truncated=truncated,
        metadata={"model_name": adapter.model_name, "bos": bos is not None},
    )


def _measure(
    adapter: ModelAdapter,
    run_ids: list[int],
    neurons: LanguageNeurons,
    language: str,
    measure: Measure,
    top_neurons: int,
) -> tuple[list[float], list[tuple[tuple[int, int, float], ...]]]:
    """Per position: the measure, and the top firing neurons. One forward pass, hooks only on
    the layers where ``language`` has neurons; each keeps only those columns of hook_pre."""
    n = len(run_ids)
    layers = {
        layer: neurons.indices(language, layer)
        for layer in range(neurons.n_layers)
        if neurons.indices(language, layer).numel()
    }
    totals = torch.zeros(n, dtype=torch.float64)
    candidates: list[tuple[Tensor, Tensor, Tensor]] = []  # (layer, index, act) per pos x m
    act_fn = adapter.act_fn

    def make_hook(layer: int, index: Tensor) -> Any:
        def hook_fn(act: Tensor, hook: Any) -> None:
            pre = act[0, :, index.to(act.device)].to(torch.float32).cpu()  # pos k
            fires = pre > 0
            acts = act_fn(pre)
            if measure == "count":
                totals.add_(fires.sum(-1).to(torch.float64))
            else:
                totals.add_(acts.sum(-1).to(torch.float64))
            if top_neurons:
                m = min(top_neurons, index.numel())
                ranked = torch.where(fires, acts, torch.full_like(acts, -math.inf))
                best = torch.topk(ranked, m, dim=-1)  # pos m
                candidates.append(
                    (torch.full_like(best.indices, layer), index[best.indices], best.values)
                )

        return hook_fn

    if layers:
        hooks = [(adapter.hook_pre(layer), make_hook(layer, idx)) for layer, idx in layers.items()]
        tokens = torch.tensor([run_ids], dtype=torch.long, device=adapter.device)
        with torch.inference_mode():
            adapter.model.run_with_hooks(
                tokens, fwd_hooks=hooks, return_type=None, stop_at_layer=max(layers) + 1
            )
    tops: list[tuple[tuple[int, int, float], ...]] = [() for _ in range(n)]
    if candidates:
        lay = torch.cat([c[0] for c in candidates], dim=-1)  # pos M
        idx = torch.cat([c[1] for c in candidates], dim=-1)
        val = torch.cat([c[2] for c in candidates], dim=-1)
        order = torch.argsort(val, dim=-1, descending=True)[:, :top_neurons]
        for pos in range(n):
            tops[pos] = tuple(
                (int(lay[pos, j]), int(idx[pos, j]), float(val[pos, j]))
                for j in order[pos].tolist()
                if math.isfinite(float(val[pos, j]))
            )
    return totals.tolist(), tops


def _with_scale(view: TokenView, scale: tuple[float, float]) -> TokenView:
    return replace(view, scale=scale)


# ============================================================================ drawing


def _tooltip(view: TokenView, k: int) -> str:
    value = view.values[k]
    shown = f"{int(value)}" if view.measure == "count" else f"{value:.3f}"
    what = "neurons firing" if view.measure == "count" else "summed activation"
    lines = [
        f"token {view.tokens[k]!r} (id {view.token_ids[k]})",
        f"{view.language} {what}: {shown}",
    ]
    if view.identified is not None:
        lines.append(f"text identified as {view.identified}")
    if view.top_neurons[k]:
        lines.append(
            "top neurons: "
            + ", ".join(f"{layer}.{index} ({act:.2f})" for layer, index, act in view.top_neurons[k])
        )
    return "\n".join(lines)


def _tokens_html(view: TokenView) -> str:
    """The tokens as inline spans: a background colour per value, the details in a tooltip."""
    low, high = view.color_scale()
    spans = []
    for k, piece in enumerate(view.tokens):
        bg = colour(view.values[k], low, high)
        tip = escape(_tooltip(view, k)).replace("\n", "&#10;")
        spans.append(
            f'<span class="tok" style="background:{bg};color:{text_colour(bg)}" '
            f'title="{tip}" data-value="{view.values[k]:.6g}">{escape(piece)}</span>'
        )
    return f'<div class="tokens">{"".join(spans)}</div>'


def _circuitsvis_html(view: TokenView) -> str:
    """CircuitsVis' ColoredTokens, with its script inlined (works offline)."""
    cv_tokens = _circuitsvis()
    if cv_tokens is None:  # pragma: no cover - _resolve_backend checked it
        return _tokens_html(view)
    low, high = view.color_scale()
    rendered = cv_tokens.colored_tokens(
        list(view.tokens), [float(v) for v in view.values], min_value=low, max_value=high
    )
    return str(rendered.local_src)


def _legend(low: float, high: float) -> str:
    gradient = f"linear-gradient(to right,{colour(low, low, high)},{colour(high, low, high)})"
    return (
        f'<div class="muted">{low:.3g}<span class="legend" style="background:{gradient}">'
        f"</span>{high:.3g}</div>"
    )
