"""The rich notebook views: well-formed HTML that shows the right numbers."""

from html.parser import HTMLParser

import torch

from tl_lape.html import bar_chart, colour, neurons_html, stats_html, table
from tl_lape.neurons import LanguageNeurons
from tl_lape.stats import ActivationStats

VOID = {"br", "img", "meta", "hr", "input", "link"}


class _Checker(HTMLParser):
    """Fails on a closing tag that does not match the open one; collects the text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs) -> None:
        pass

    def handle_endtag(self, tag) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data) -> None:
        self.text.append(data)


def well_formed_text(fragment: str) -> str:
    checker = _Checker()
    checker.feed(fragment)
    checker.close()
    assert checker.stack == []
    return " ".join(checker.text)


def _neurons() -> LanguageNeurons:
    return LanguageNeurons.from_indices(
        {"en": {0: [1, 2], 5: [3]}, "fr": {0: [2], 2: [4, 5]}, "zh": {}}, n_layers=6, d_mlp=8
    )


def test_neurons_view_is_well_formed_and_counts_right() -> None:
    neurons = _neurons()
    page = neurons._repr_html_()
    assert page == neurons_html(neurons)
    text = well_formed_text(page)
    assert "LanguageNeurons" in text and "6 layers" in text
    assert "5 selected (10.42%)" in text  # union of 6 memberships sharing one neuron, of 48
    # en: 3 neurons, bottom third (layers 0-1) 2, middle 0, top third (layers 4-5) 1
    assert "en 3 2 0 1" in " ".join(text.split())
    assert "fr 3 1 2 0" in " ".join(text.split())
    assert "en-fr 1" in " ".join(text.split())  # the one shared neuron
    assert "<script" not in page  # dependency-free, no script
    assert repr(neurons).startswith("LanguageNeurons(")  # the plain repr stays


def test_stats_view_shows_tokens_and_rates() -> None:
    counts = torch.tensor([[[5, 0], [10, 10]]])  # one layer, two neurons, two languages
    stats = ActivationStats.from_counts(counts, [10, 20], ["en", "fr"])
    text = " ".join(well_formed_text(stats._repr_html_()).split())
    assert stats._repr_html_() == stats_html(stats)
    assert "en 10 0.750 0.500 0.000" in text  # rates 0.5 and 1.0
    assert "fr 20 0.250 0.000 0.500" in text  # rates 0.0 and 0.5


def test_tables_escape_and_shade() -> None:
    page = table(["a", "b"], [["<x>", 1.0]], shade=[[None, 1.0]], scale=(0.0, 1.0))
    assert "&lt;x&gt;" in page and "<x>" not in page
    assert colour(1.0, 0.0, 1.0) in page
    assert colour(float("nan"), 0.0, 1.0) == "rgb(230,230,230)"
    assert colour(-1.0, -1.0, 1.0, diverging=True) == "rgb(33,102,172)"
    assert colour(1.0, -1.0, 1.0, diverging=True) == "rgb(178,24,43)"


def test_bar_chart_draws_one_bar_per_value_with_whiskers() -> None:
    svg = bar_chart(["a", "b", "c"], [1.0, -0.5, float("nan")], errors=[(0.5, 1.5), None, None])
    well_formed_text(svg)
    assert svg.count("<rect") == 2  # the NaN has no bar
    assert svg.count("<line") == 2  # one whisker and the zero line


def test_report_page_in_a_browser(tmp_path, browser) -> None:
    """The demo's report.html, built from a tiny set: it loads without console errors and
    shows every section, the figure inline and the links to the data files."""
    import matplotlib

    matplotlib.use("Agg")
    from tl_lape.experiments.reports import report_page, save_figure, write_text
    from tl_lape.plots import plot_neurons_per_layer

    neurons = _neurons()
    counts = torch.randint(0, 10, (6, 8, 3), generator=torch.Generator().manual_seed(0))
    stats = ActivationStats.from_counts(counts, [10] * 3, ["en", "fr", "zh"])
    save_figure(plot_neurons_per_layer(neurons), tmp_path / "neurons_per_layer.png")
    page = report_page(
        tmp_path,
        title="tl-lape demo report",
        intro="Model: a tiny one.\n\nFiles: neurons.json, neurons_per_layer.png.",
        neurons=neurons,
        stats=stats,
        sections=[
            "### Perplexity under deactivation\n\n"
            "| a | b |\n| --- | ---: |\n| en | +0.1 [0.0, 0.2] |"
        ],
        files=["neurons.json", "neurons_per_layer.png"],
    )
    write_text(tmp_path / "report.html", page)
    shown = browser(tmp_path / "report.html", png=tmp_path / "report.png", size="1000,1400")
    assert shown.console == []
    for heading in [
        "Summary",
        "Neuron set",
        "Statistics",
        "Figures",
        "Perplexity under deactivation",
        "Data files",
    ]:
        assert f">{heading}</h2>" in shown.dom, heading
    assert shown.dom.count("data:image/png;base64,") == 1
    assert 'href="neurons.json"' in shown.dom
    assert "+0.1 [0.0, 0.2]" in shown.dom
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_steering_study_view_shows_fresh_success_per_method_and_target() -> None:
    from tl_lape.experiments.steering_study import SteeringStudy

    def row(phase, method, target, success):
        return {
            "phase": phase,
            "setting": "english",
            "method": method,
            "target": target,
            "success_rate": success,
            "config": method,
        }

    study = SteeringStudy.from_dict(
        {
            "rows": [
                row("fresh", "lape", "fr", 0.75),
                row("fresh", "lape", "zh", 0.5),
                row("fresh", "random", "fr", 0.0),
                row("fresh", "random", "fr", 0.5),
                row("fresh", "random", "zh", 0.25),
                row("fresh", "random", "zh", 0.25),
                row("dev", "lape", "fr", 1.0),
            ],
            "chosen": {},
        }
    )
    text = " ".join(well_formed_text(study._repr_html_()).split())
    assert "english prompts" in text
    assert "lape 75% 50%" in text  # fresh rows only: the dev row's 100% is not shown
    assert "random (mean of 2 draws) 25% 25%" in text


def test_markdown_of_a_stray_table_line_is_a_paragraph() -> None:
    """A '|' line without a table rule used to stall the converter; it is text."""
    from tl_lape.html import markdown_html

    assert markdown_html("| a | b |") == "<p>| a | b |</p>"
    assert markdown_html("| a |\ntext") == "<p>| a | text</p>"  # one paragraph
    assert markdown_html("intro\n| x |\n| --- |\n| 1 |").startswith("<p>intro</p><table>")
