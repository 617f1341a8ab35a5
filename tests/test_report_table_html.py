"""The human report formats: the terminal table (aidetect/report/table.py) and the HTML page
(aidetect/report/html.py)."""

from __future__ import annotations

import base64
import io

from report_helpers import ODD_PATH, SHA, WIDTH, _Figures, _info, _scored, _write

from aidetect.report import (
    TableWriter,
    summary_line,
)

# --- table -----------------------------------------------------------------------------------


def test_table_lists_ai_then_real_then_errors_with_the_summary(results) -> None:
    info = _info(results)
    text = _write("table", results, info)
    for result in results:
        assert text.count(result.path) == 1, result.path  # markup and emoji codes print as is
    order = ["b/ai-high.png", ODD_PATH, "d/real-mid.png", "a/real-low.png", "c/broken.jpg",
             "e/tiny.png"]
    positions = [text.index(path) for path in order]
    assert positions == sorted(positions)
    assert "0.973" in text and "640x480" in text and "20x20" in text
    assert "cannot decode: truncated file" in text
    assert text.rstrip().splitlines()[-1] == summary_line(info)
    assert "incomplete" not in text.lower()


def test_table_caps_real_rows_but_counts_the_rest() -> None:
    results = [_scored("ai.png", 0.9)] + [_scored(f"real-{i:02d}.png", i / 100) for i in range(30)]
    stream = io.StringIO()
    writer = TableWriter(output=None, stdout=stream, width=WIDTH, max_real_rows=5)
    for result in results:
        writer.add(result)
    writer.finish(_info(results))
    text = stream.getvalue()
    assert "ai.png" in text
    shown = [f"real-{i:02d}.png" for i in range(25, 30)]
    assert all(path in text for path in shown)
    assert "real-24.png" not in text
    assert "... 25 more real images" in text


def test_table_escapes_control_characters_in_paths() -> None:
    results = [_scored("evil\x1b[2J\nname.png", 0.9)]
    text = _write("table", results, _info(results))
    assert "\x1b" not in text
    assert "evil\\x1b[2J\\nname.png" in text


# --- HTML ------------------------------------------------------------------------------------


def test_html_has_one_card_per_file_sorted_by_score_with_errors_last(results) -> None:
    info = _info(results)
    text = _write("html", results, info)
    parser = _Figures()
    parser.feed(text)
    parser.close()
    figures = parser.figures
    assert sorted(f["data-path"] for f in figures) == sorted(r.path for r in results)
    assert [f["data-path"] for f in figures] == [
        "b/ai-high.png", ODD_PATH, "d/real-mid.png", "a/real-low.png", "c/broken.jpg",
        "e/tiny.png",
    ]
    by_path = {f["data-path"]: f for f in figures}
    assert by_path["b/ai-high.png"]["data-label"] == "ai-generated"
    assert float(by_path["b/ai-high.png"]["data-score"]) == 0.973
    assert by_path["a/real-low.png"]["data-label"] == "real"
    assert by_path["c/broken.jpg"]["data-label"] == "error"
    assert "data-score" not in by_path["c/broken.jpg"]
    # The thumbnail is embedded byte for byte; the others get a placeholder.
    src = by_path["b/ai-high.png"]["img"]
    assert src.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == results[1].thumbnail
    assert all(f["placeholder"] for f in figures if f["data-path"] != "b/ai-high.png")
    # The odd path is escaped: the parser gives it back whole and it adds no markup.
    assert "<b>" not in text and "&lt;b&gt;&amp;amp;" in text
    assert "b" not in parser.tags


def test_html_is_self_contained_with_the_summary_on_top(results) -> None:
    info = _info(results)
    text = _write("html", results, info)
    parser = _Figures()
    parser.feed(text)
    assert all(src.startswith("data:") for src in parser.srcs)
    assert not {"script", "link", "iframe", "object"} & parser.tags
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text  # the page itself forbids any fetch
    header = text[: text.index('<main class="results">')]
    for fact in (SHA, "a" * 40, "org/detector", "cpu (2 threads)", "0.5", "2026-03-01T10:00:00Z",
                 "2026-03-01T10:00:04Z", "0.9.0"):
        assert fact in header, fact
    assert summary_line(info) in header
    assert "incomplete" not in parser.classes
