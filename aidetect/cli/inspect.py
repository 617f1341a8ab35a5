"""`aidetect inspect`: the full provenance of a few files, for a person (or `--json`)."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from aidetect.cli.app import app, interruptions
from aidetect.cli.options import TrustAnchorsOption

INSPECT_EXAMPLES = """Examples:

\b
  aidetect inspect photo.jpg render.png     # what each file declares, where
  aidetect inspect photo.jpg --json | jq .  # all, C2PA manifest included
  aidetect inspect photo.jpg --trust-anchors roots.pem

\b
Exit codes:
  0    every file's metadata was read
  2    usage error
  3    some metadata could not be read (see "error")
  70   internal error, a bug (AIDETECT_DEBUG=1 shows the traceback)
"""


@app.command("inspect", epilog=INSPECT_EXAMPLES,
             short_help="Show what files declare about their origin.")
def inspect_command(
    files: Annotated[list[str], typer.Argument(help="Image files.", show_default=False)],
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON document: per file, its provenance and "
                           "the whole C2PA manifest store.")
    ] = False,
    trust_anchors: TrustAnchorsOption = None,
) -> None:
    """Show what files declare about their origin: C2PA, IPTC XMP, generator parameters, EXIF."""
    from aidetect.errors import EXIT_INCOMPLETE, EXIT_OK, UsageError
    from aidetect.provenance import ProvenanceSettings, load_trust_anchors, read_provenance
    from aidetect.text import terminal_safe

    for path in files:  # as scan treats the paths it is given: a missing one is a usage error
        if not os.path.isfile(path):
            what = "is a folder: inspect takes files" if os.path.isdir(path) else "no such file"
            raise UsageError(f"{terminal_safe(path)}: {what}")
    anchors = load_trust_anchors(trust_anchors) if trust_anchors is not None else None
    settings = ProvenanceSettings(trust_anchors=anchors)
    with interruptions():
        records = [(path, read_provenance(path, settings, full=True)) for path in files]
        if json_output:
            sys.stdout.write(json.dumps([_record(path, p) for path, p in records],
                                        indent=2, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write("\n".join(_text(path, p) for path, p in records))
    failed = any(p.error is not None for _, p in records)
    raise typer.Exit(EXIT_INCOMPLETE if failed else EXIT_OK)


def _record(path: str, provenance) -> dict[str, Any]:
    from aidetect.text import clean

    return clean({"path": path, **provenance.to_dict(),
                  "c2pa_manifest_store": provenance.manifest_store})


def _text(path: str, provenance) -> str:
    from aidetect.provenance.evidence import declaration_text, describe
    from aidetect.text import terminal_safe

    lines = [terminal_safe(path)]
    lines.append("  " + (declaration_text(provenance) or "declares nothing"))
    for item in provenance.evidence:
        lines.append("  - " + terminal_safe(describe(item)))
        if item["source"] == "c2pa":
            for action in item["actions"]:
                source_type = action.get("digitalSourceType")
                lines.append(f"      action {terminal_safe(action['action'])}"
                             + (f" ({terminal_safe(source_type)})" if source_type else ""))
            lines.append(f"      checked: {', '.join(item['checked'])}")
            lines.append(f"      not checked: {', '.join(item['not_checked'])}")
    store = provenance.manifest_store
    if store:
        active = (store.get("manifests") or {}).get(store.get("active_manifest")) or {}
        labels = [str(a.get("label")) for a in active.get("assertions") or []
                  if isinstance(a, dict)]
        lines.append(f"  C2PA manifest store: {len(store.get('manifests') or {})} manifest(s); "
                     f"active {terminal_safe(str(store.get('active_manifest')))}; assertions: "
                     f"{terminal_safe(', '.join(labels)) or 'none'} (--json shows it all)")
    if provenance.error:
        lines.append(f"  error: {terminal_safe(provenance.error)}")
    return "\n".join(lines) + "\n"
