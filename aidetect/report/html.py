"""The HTML report: one self-contained page with a thumbnail card per file."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from aidetect.provenance.evidence import declaration_text
from aidetect.report.base import (
    ReportWriter,
    interrupted_text,
    score_text,
    size_text,
    split_results,
    summary_line,
)
from aidetect.results import ImageResult, ScanInfo
from aidetect.text import clean, utf8


class HtmlWriter(ReportWriter):
    """One self-contained page: the summary, then a card per file (highest score first, errors
    last) with its thumbnail embedded as a data: URL.

    Each card is `<figure class="result" data-path=... data-label=... data-score=...>`;
    `data-label` is "ai-generated", "real" or "error", and `data-score` (the full float) is
    absent for errors. `data-declared` ("ai-generated" or "capture") is present when the file's
    metadata declares its origin; the caption then says so and names the sources. A
    Content-Security-Policy forbids every network fetch.
    """

    def render(self, info: ScanInfo) -> str:
        ai, real, errors = split_results(self.results)
        head = clean(info.to_dict())
        counts = info.counts
        title = f"aidetect report: {counts.total} files, {counts.ai_generated} AI-generated"
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" '
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            "<header>",
            "<h1>aidetect report</h1>",
        ]
        if not info.complete:
            parts.append(
                '<p class="incomplete" role="alert"><strong>Incomplete:</strong> the scan was '
                f"{_esc(interrupted_text(info))}; this report covers those "
                f"{info.counts.total}.</p>"
            )
        parts.append(f'<p class="summary">{_esc(summary_line(info))}</p>')
        parts.append(_info_list(head))
        parts.append("</header>")
        parts.append('<main class="results">')
        parts.extend(_card(result) for result in (*ai, *real, *errors))
        parts.append("</main>")
        parts.append("</body>")
        parts.append("</html>")
        return "\n".join(parts) + "\n"


def _card(result: ImageResult) -> str:
    label = result.label if result.ok and result.label else "error"
    label = _esc(label)
    attrs = f'class="result {label}" data-path="{_esc(result.path)}" data-label="{label}"'
    if result.ok and result.score is not None and math.isfinite(result.score):
        attrs += f' data-score="{result.score!r}"'
    if result.provenance is not None and result.provenance.declared is not None:
        attrs += f' data-declared="{_esc(result.provenance.declared)}"'
    if result.thumbnail:
        data = base64.b64encode(result.thumbnail).decode("ascii")
        thumb = f'<img src="data:image/jpeg;base64,{data}" alt="{_esc(result.path)}">'
    else:
        thumb = '<div class="placeholder">no preview</div>'
    verdict = {"ai-generated": "AI-generated", "real": "real"}.get(label, "error")
    caption = [f'<span class="verdict">{verdict}</span>']
    if result.ok and result.score is not None:
        caption.append(f'<span class="score">{score_text(result)}</span>')
    caption.append(f'<span class="path">{_esc(result.path)}</span>')
    if size_text(result):
        caption.append(f'<span class="size">{size_text(result)}</span>')
    if result.error:
        caption.append(f'<span class="error">{_esc(result.error)}</span>')
    if result.provenance is not None:
        if result.provenance.declared is not None:
            caption.append(f'<span class="declared">'
                           f'{_esc(declaration_text(result.provenance))}</span>')
        if result.provenance.error:
            caption.append(f'<span class="provenance-error">provenance: '
                           f'{_esc(result.provenance.error)}</span>')
    return f'<figure {attrs}>{thumb}<figcaption>{" ".join(caption)}</figcaption></figure>'


def _not_scored(counts: dict[str, int]) -> str:
    """Why not every file found got a score, e.g. "no (1 error)"."""
    missing = counts["found"] - counts["total"]
    reasons = [f"{counts['errors']} error" + ("" if counts["errors"] == 1 else "s")
               ] if counts["errors"] else []
    if missing:
        reasons.append(f"{missing} not reached")
    if not counts["found"]:
        reasons.append("no files found")
    return f"no ({', '.join(reasons)})" if reasons else "no"


def _info_list(head: dict[str, Any]) -> str:
    model = head["model"]
    rows = [
        ("model", model["reference"] + f" ({model['source']})"),
        ("sha256", model["sha256"]),
        ("revision", model["revision"]),
        ("backbone", model["backbone"]),
        ("preprocess", model["preprocess"]),
        ("threshold", head["threshold"]),
        ("device", head["device"]),
        ("processes", head["processes"]),
        ("started", head["started"]),
        ("finished", head["finished"]),
        ("complete", "yes" if head["complete"] else "no (interrupted)"),
        ("all scored", "yes" if head["all_scored"] else _not_scored(head["counts"])),
        ("aidetect", head["tool"]["version"]),
    ]
    items = "".join(
        f'<div><dt>{name}</dt><dd class="{name}">{_esc(str(value))}</dd></div>'
        for name, value in rows
        if value is not None
    )
    return f'<dl class="info">{items}</dl>'


def _esc(text: str) -> str:
    return html.escape(utf8(text), quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1b1b1b;
background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .5rem}
.incomplete{background:#fff3cd;border:1px solid #e0b000;padding:.5rem .75rem;border-radius:4px}
.summary{font-size:1.1rem;font-weight:600}
dl.info{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:.25rem 1rem;
font-size:.85rem;margin:0 0 1rem}
dl.info div{display:flex;gap:.5rem;min-width:0}
dl.info dt{color:#666}
dl.info dd{margin:0;overflow-wrap:anywhere}
dd.sha256{font-family:ui-monospace,monospace}
.results{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:.75rem}
figure.result{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;
border-top:4px solid #2e7d32}
figure.ai-generated{border-top-color:#c62828}
figure.error{border-top-color:#e0b000}
figure.result img,.placeholder{display:block;width:100%;height:160px;object-fit:contain;
background:#eee}
.placeholder{display:flex;align-items:center;justify-content:center;color:#888;font-size:.8rem}
figcaption{display:flex;flex-wrap:wrap;gap:.25rem .5rem;font-size:.8rem;margin-top:.4rem}
.verdict{font-weight:700}
figure.ai-generated .verdict{color:#c62828}
figure.real .verdict{color:#2e7d32}
.score{font-variant-numeric:tabular-nums}
.path{flex-basis:100%;overflow-wrap:anywhere;color:#333}
.size{color:#666}
.error{flex-basis:100%;color:#8a6d00}
.declared{flex-basis:100%;font-weight:600;color:#6a1b9a}
figure[data-declared=capture] .declared{color:#1565c0}
.provenance-error{flex-basis:100%;color:#8a6d00;font-size:.75rem}
""".strip()
