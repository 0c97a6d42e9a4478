"""The plots of `longred eval` say what `results.md` says (issue 23), drawn from small rows."""

from __future__ import annotations

import math
import re

import pytest

from longred_pl.eval import report

SPAN, TRIALS, VOCAB = 16, 8, 1024
SCORED = TRIALS * (SPAN - 1)  # 120 tokens scored per distance


def _rows() -> list[dict]:
    """A teacher and a student as `longred eval` returns them, with identical curves."""
    copy = {"span": SPAN, "trials": TRIALS, "chance": 1 / VOCAB, "vocab_size": VOCAB}
    same = {"0": 1.0, "4": 1.0, "16": 0.5, "64": 1 / SCORED}
    depths = ["0.0", "0.5", "1.0"]
    lengths = ["64", "128", "256", "512", "1014"]
    ruler = {
        "tasks": {"niah_single_1": {"256": 1.0, "512": 1.0}},
        "average": {"256": 1.0, "512": 1.0},
        "limit": 5,
        "lengths": [256, 512],
    }
    buckets = [{"start": 0, "end": 512, "ppl": 50.0}, {"start": 512, "end": 1024, "ppl": 60.0}]
    base = {"rope": "default", "short": {"ppl": 50.0, "loss": 3.9}, "ruler": ruler}
    teacher = {
        **base,
        "name": "teacher",
        "is_teacher": True,
        "window": 256,
        "long": {"ppl": 55.0, "buckets": buckets},
        "copy": {**copy, "accuracy": {**same, "233": 0.0}},
        "passkey": {n: {d: float(int(n) <= 256) for d in depths} for n in lengths},
    }
    student = {
        **base,
        "name": "student",
        "window": 1024,
        "long": {"ppl": 55.0, "buckets": buckets},
        "copy": {**copy, "accuracy": {**same, "256": 3 / SCORED, "991": 0.0}},
        "passkey": {n: {d: 0.5 if n == "1014" else 1.0 for d in depths} for n in lengths},
    }
    return [teacher, student]


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """`plot_results` of `_rows()`: the figures by file name, as saved."""
    from matplotlib.figure import Figure

    drawn = {}
    save = Figure.savefig

    def savefig(self, path, *args, **kwargs):
        drawn[str(path).rsplit("/", 1)[-1]] = self
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    written = report.plot_results(_rows(), str(tmp_path))
    assert sorted(drawn) == sorted(p.rsplit("/", 1)[-1] for p in written)
    for fig in drawn.values():
        fig.canvas.draw()
    return drawn


def _table(markdown: str, title: str) -> list[list[str]]:
    """The cells of the markdown table after the line starting with `title`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    body = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return body


def test_copy_plot_x_axis_is_the_tables_filler_distance(figures):
    # before: x = span + filler (16, 20, 32, 80, ...) on a log axis, the table lists 0, 4, 16, ...
    rows = _table(report.results_markdown(_rows()), "Repeat-copy accuracy by filler distance")
    distances = [r[0] for r in rows]
    assert distances == ["0", "4", "16", "64", "233", "256", "991"]
    (ax,) = figures["copy_accuracy.png"].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == distances
    assert "filler distance" in ax.get_xlabel() and "span +" not in ax.get_xlabel()
    for row in _rows():
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == row["name"]]
        ticks = [round(x) for x in line.get_xdata()]  # each point sits at its distance's tick
        assert [distances[t] for t in ticks] == sorted(row["copy"]["accuracy"], key=int)


def test_chance_is_a_stated_one_sided_exact_binomial_test(figures):
    # 1 hit in 120 at chance 1/1024 has p = 0.11: at chance (before: "above", 2 s.d. rule)
    assert report.at_chance(1 / SCORED, 1 / VOCAB, SCORED)
    assert not report.at_chance(2 / SCORED, 1 / VOCAB, SCORED)  # p = 0.0067 < 0.01
    markdown = report.results_markdown(_rows())
    assert "one-sided exact binomial test of the hits against 1/vocab" in markdown
    assert "alpha = 0.01" in markdown
    cells = {r[0]: r[1:] for r in _table(markdown, "Repeat-copy accuracy by filler distance")}
    assert cells["64"] == ["0.008 ~", "0.008 ~"] and cells["256"] == ["-", "0.025"]
    (ax,) = figures["copy_accuracy.png"].axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    test = "(one-sided exact binomial test, alpha = 0.01)"
    assert f"not above chance: < 2 hits of 120\n{test}" in legend
    tail = report.binomial_tail
    assert tail(0, SCORED, 1 / VOCAB) == 1.0 and tail(SCORED + 1, SCORED, 0.5) == 0.0
    assert tail(1, SCORED, 1 / VOCAB) == pytest.approx(1 - (1 - 1 / VOCAB) ** SCORED, rel=1e-12)
    assert tail(3, 3, 0.5) == pytest.approx(1 / 8) and tail(2, 3, 0.5) == pytest.approx(1 / 2)
    assert report.min_hits_above_chance(SCORED, 1 / VOCAB) == 2
    assert report.min_hits_above_chance(10, 0.5) == 10  # p(10 of 10) = 0.001; p(9) = 0.011


def test_binomial_tail_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for hits, n, p in [(1, 120, 1 / 1024), (5, 120, 1 / 1024), (40, 300, 0.1), (7, 7, 0.3)]:
        assert report.binomial_tail(hits, n, p) == pytest.approx(
            stats.binom.sf(hits - 1, n, p), rel=1e-9
        )


def _luminance(rgb) -> float:
    def linear(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a, b) -> float:
    high, low = sorted([_luminance(a), _luminance(b)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_heatmap_labels_take_the_colour_that_reads_on_their_cell(figures):
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    cmap = colormaps["RdYlGn"]
    labels = 0
    for ax in figures["passkey_heatmap.png"].axes[:2]:  # the two panels, not the colour bar
        for text in ax.texts:
            cell = cmap(float(text.get_text()))
            # WCAG AA for normal text is 4.5; black on dark red was 2.8 before
            assert _contrast(to_rgb(text.get_color()), cell) >= 4.5, text.get_text()
            labels += 1
    assert labels == 2 * 3 * 5
    assert report.text_colour(cmap(0.0)) == "white"  # dark red
    assert report.text_colour(cmap(1.0)) == "white"  # dark green
    assert report.text_colour(cmap(0.5)) == "black"  # pale yellow


def test_passkey_columns_say_the_window_of_a_window_less_the_answer(figures):
    teacher, student = figures["passkey_heatmap.png"].axes[:2]
    ticks = [t.get_text() for t in student.get_xticklabels()]
    assert ticks == ["64", "128", "256", "512", "1014\n(= 1024 - 10)"]
    markdown = report.results_markdown(_rows())
    assert re.search(r"columns: prompt tokens; 1014 = 1024 - 10: a whole window less", markdown)
    assert report.passkey_columns(["512", "1014"], [256, 1024], answer=10) == [
        "512",
        "1014 (= 1024 - 10)",
    ]


def _overlaps(fig, legend) -> list[str]:
    box = legend.get_window_extent()
    return [ax.get_title() for ax in fig.axes if ax.get_visible() and box.overlaps(ax.bbox)]


@pytest.mark.parametrize("name", ["copy_accuracy.png", "ruler.png", "ppl_by_position.png"])
def test_identical_curves_stay_visible_and_legends_sit_off_the_data(figures, name):
    fig = figures[name]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends and all(not _overlaps(fig, legend) for legend in legends)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        teacher, student = (
            [ln for ln in ax.get_lines() if ln.get_label() == n] for n in ("teacher", "student")
        )
        (t,), (s,) = teacher, student
        # the teacher (drawn first) shows around a student curve identical to it
        assert (t.get_marker(), t.get_linestyle()) != (s.get_marker(), s.get_linestyle())
        assert t.get_markersize() > s.get_markersize() and t.get_zorder() < s.get_zorder()
        assert t.get_linewidth() > s.get_linewidth()
        if name == "copy_accuracy.png":  # evenly spaced columns: the points also sit side by side
            assert not math.isclose(t.get_xdata()[0], s.get_xdata()[0])


def test_ruler_tables_say_which_cells_were_skipped_and_why():
    """results.md (longred eval), ruler.md and the model card share ruler_markdown."""
    from longred_pl.eval.report import ruler_markdown

    ruler = {
        "average": {"512": 0.5, "1024": 0.25},
        "tasks": {"niah_single_1": {"512": 0.5, "1024": 0.25}, "ruler_vt": {"1024": 0.0}},
        "skipped": {"ruler_vt": {"512": "its smallest prompt plus answer needs 1002 tokens"}},
        "limit": 5,
    }
    text = ruler_markdown([{"name": "student", "window": 1024, "ruler": ruler}])
    assert "| student | ruler_vt | - | 0.0 |" in text
    assert "- student: ruler_vt at 512 tokens: its smallest prompt plus answer needs 1002" in text
