"""Generator parameters that image front-ends write into PNG text chunks, EXIF UserComment and
JPEG comments: which tool made the file, with a short excerpt (never the whole workflow).

Formats, as their projects write them:
- AUTOMATIC1111 and Forge: "parameters" = prompt, "Negative prompt: ...", then one line
  "Steps: 20, Sampler: ..., Version: v1.10.1" (Forge: "Version: f2.0.1..."); in JPEG and WebP
  the same text goes to EXIF UserComment.
- ComfyUI: "prompt" (the API graph: {id: {"class_type", "inputs"}}) and "workflow" (the UI
  graph: {"nodes": [...]}), both JSON.
- InvokeAI: "invokeai_metadata" and "invokeai_graph" (3.x on, JSON), "sd-metadata" (2.x,
  JSON), "Dream" (1.x, a command line).
- NovelAI: "Software" = "NovelAI", "Description" = the prompt, "Comment" = JSON settings.
- Fooocus: "parameters" (JSON or A1111 text) and "fooocus_scheme".
- Midjourney: "Description" = the prompt and its flags, then "Job ID: <uuid>".
"""

from __future__ import annotations

import json
import re
from typing import Any

from aidetect.provenance.evidence import DECLARED_AI, excerpt

_A1111_SETTINGS = re.compile(r"(?m)^Steps: \d+, .*Sampler: ")
_VERSION = re.compile(r"(?m)Version: (\S+?)(?:,|$)")
_MIDJOURNEY_JOB = re.compile(r"Job ID: [0-9a-f]{8}-[0-9a-f]{4}-")


def read_png_text(chunks: dict[str, str]) -> list[dict[str, Any]]:
    """The generator evidence in a PNG's text chunks (keyword -> text), and the chunks that
    are facts only ("Software")."""
    found: list[dict[str, Any]] = []

    def add(key: str, tool: str, text: str) -> None:
        found.append({"source": "png-text", "key": key, "tool": tool,
                      "excerpt": excerpt(text), "declares": DECLARED_AI})

    if "parameters" in chunks:
        text = chunks["parameters"]
        if "fooocus_scheme" in chunks:
            add("parameters", "Fooocus", _json_field(text, "prompt", "Prompt") or text)
        elif _A1111_SETTINGS.search(text):
            add("parameters", _a1111_tool(text), text)
    if "prompt" in chunks or "workflow" in chunks:
        key = "prompt" if "prompt" in chunks else "workflow"
        summary = _comfyui_summary(chunks[key], api=key == "prompt")
        if summary is not None:
            add(key, "ComfyUI", summary)
    for key in ("invokeai_metadata", "sd-metadata", "invokeai_graph", "Dream"):
        if key in chunks:
            text = chunks[key]
            add(key, "InvokeAI", _json_field(text, "positive_prompt", "prompt") or text)
            break
    software = chunks.get("Software", "").strip()
    description = chunks.get("Description", "")
    if software.lower().startswith("novelai"):
        add("Software", "NovelAI", description or chunks.get("Source", ""))
    elif _MIDJOURNEY_JOB.search(description):
        add("Description", "Midjourney", description)
    if software and not software.lower().startswith("novelai"):
        found.append({"source": "png-text", "key": "Software", "value": excerpt(software),
                      "declares": None})
    return found


def read_parameters_text(text: str, *, source: str, key: str) -> list[dict[str, Any]]:
    """Evidence from an A1111-style parameters text found in EXIF UserComment or a JPEG
    comment (`source` "exif" or "comment"); nothing for any other text."""
    if not _A1111_SETTINGS.search(text):
        return []
    return [{"source": source, "key": key, "tool": _a1111_tool(text), "excerpt": excerpt(text),
             "declares": DECLARED_AI}]


def _a1111_tool(text: str) -> str:
    match = _VERSION.search(text)
    if match and re.match(r"f\d", match.group(1)):
        return "Forge"
    return "AUTOMATIC1111" if match else "AUTOMATIC1111 format"


def _comfyui_summary(text: str, *, api: bool) -> str | None:
    """"N nodes; checkpoint; first prompt", or None when the JSON is not a ComfyUI graph."""
    graph = _json(text)
    if api and isinstance(graph, dict):
        nodes = [n for n in graph.values() if isinstance(n, dict) and "class_type" in n]
        inputs = [n.get("inputs") if isinstance(n.get("inputs"), dict) else {} for n in nodes]
    elif not api and isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        nodes = [n for n in graph["nodes"] if isinstance(n, dict)]
        inputs = [{"text": w[0]} if n.get("type") == "CLIPTextEncode" and isinstance(
            w := n.get("widgets_values"), list) and w else {} for n in nodes]
    else:
        return None
    if not nodes:
        return None
    parts = [f"{len(nodes)} nodes"]
    checkpoints = [i["ckpt_name"] for i in inputs if isinstance(i.get("ckpt_name"), str)]
    prompts = [i["text"] for i in inputs if isinstance(i.get("text"), str)]
    if checkpoints:
        parts.append(f"checkpoint {checkpoints[0]}")
    if prompts:
        parts.append(f"prompt: {prompts[0]}")
    return "; ".join(parts)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's stack
        return None


def _json_field(text: str, *names: str) -> str | None:
    """The first of `names` found as a string at the top of a JSON object, or in its "image"
    (InvokeAI 2.x)."""
    value = _json(text)
    for obj in (value, value.get("image") if isinstance(value, dict) else None):
        if isinstance(obj, dict):
            for name in names:
                if isinstance(obj.get(name), str):
                    return obj[name]
    return None
