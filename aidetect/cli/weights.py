"""Weights commands: `models` (presets and cached detectors), `convert`, `push`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from aidetect.cli.app import app
from aidetect.cli.options import QuietOption

FormatChoice = Annotated[
    str,
    typer.Option("--format", "-f",
                 help="auto (read from the keys), dgs-net (the authors' checkpoint) or univfd "
                      "(a UnivFD fc_weights.pth head)."),
]


@app.command(
    "models",
    epilog="Examples:\n\n\b\n"
    "  aidetect models\n"
    "  aidetect models --json > models.json",
)
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the presets and the detectors in the Hugging Face cache."""
    from rich.console import Console
    from rich.table import Table

    from aidetect.hub import cached_detectors, hub_cache_dir
    from aidetect.presets import load_presets

    presets = load_presets()
    cached = cached_detectors()
    if as_json:
        document = {
            "presets": [
                {"name": p.name, "backbone": p.backbone, "pretrained": p.pretrained,
                 "preprocess": p.preprocess["method"], "threshold": p.threshold,
                 "license": p.license, "citation": p.citation}
                for p in presets.values()
            ],
            "cache": hub_cache_dir(),
            "cached": [
                {"reference": f"hf://{c.repo_id}@{c.commit}", "repo_id": c.repo_id,
                 "commit": c.commit, "refs": list(c.refs), "backbone": c.backbone,
                 "size_on_disk": c.size_on_disk}
                for c in cached
            ],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    out = Console(highlight=False, soft_wrap=True)
    table = Table(title="Presets (--weights NAME)", title_justify="left")
    for column in ("name", "backbone", "preprocessing", "threshold", "license"):
        table.add_column(column)
    for p in presets.values():
        table.add_row(p.name, f"{p.backbone} ({p.pretrained})", p.preprocess["method"],
                      f"{p.threshold:g}", p.license)
    out.print(table)
    if not cached:
        out.print(f"No aidetect detectors in the Hugging Face cache ({hub_cache_dir()}).")
        return
    table = Table(title=f"In the Hugging Face cache ({hub_cache_dir()})", title_justify="left")
    for column in ("--weights", "refs", "backbone", "size"):
        table.add_column(column)
    for c in cached:
        table.add_row(f"hf://{c.repo_id}@{c.commit[:12]}", ", ".join(c.refs) or "-", c.backbone,
                      f"{c.size_on_disk / 2**20:.1f} MiB")
    out.print(table)


@app.command(
    "convert",
    epilog="Examples:\n\n\b\n"
    "  aidetect convert model_epoch_step2.pth --out dgs-net-official\n"
    "  aidetect convert model_epoch_step2.pth --out dgs-net.safetensors \\\n"
    "      --single-file\n"
    "  aidetect convert fc_weights.pth --format univfd --out univfd-head\n\n"
    "--out must be a new or empty folder (or a new file with --single-file).",
)
def convert(
    checkpoint: Annotated[str, typer.Argument(help="A PyTorch checkpoint (.pth, .pt).")],
    out: Annotated[str, typer.Option("--out", "-o",
                                     help="The detector folder (or .safetensors file) to write.")],
    format: FormatChoice = "auto",
    single_file: Annotated[
        bool, typer.Option("--single-file",
                           help="Write one .safetensors file with the config in its metadata.")
    ] = False,
    lora_alpha: Annotated[
        float, typer.Option("--lora-alpha", help="LoRA alpha of the checkpoint; scaling is "
                            "alpha / sqrt(rank). The authors' model: 6.")
    ] = 6.0,
    quiet: QuietOption = False,
) -> None:
    """Convert a published checkpoint into a detector aidetect loads.

    The authors' DGS-Net checkpoint becomes a full detector (image tower with LoRA merged,
    head, DGS preprocessing); a UnivFD head becomes a head-only folder on the univfd preset's
    backbone. Pickles are opened with torch.load(weights_only=True) only.
    """
    from aidetect.cli.console import err_console
    from aidetect.convert import convert_checkpoint

    report = convert_checkpoint(checkpoint, out, format=format, single_file=single_file,
                                lora_alpha=lora_alpha)
    if not quiet:
        err_console.print(f"converted {checkpoint} ({report.format}) -> {report.out}")
        err_console.print(f"  backbone {report.backbone}, embed dim {report.embed_dim}"
                          + (f", {report.vision}" if report.vision else ""))
        if report.format == "dgs-net":
            err_console.print(
                f"  LoRA rank {report.lora_rank}, scaling {report.lora_scaling:.4f}, "
                f"max |delta| {report.max_abs_delta:.3g}; stored W vs frozen: "
                f"{_num(report.stored_vs_frozen)}, vs frozen + delta: "
                f"{_num(report.stored_vs_frozen_plus_delta)}; delta already in stored W: "
                f"{report.delta_in_stored}"
            )
        for note in report.notes:
            err_console.print(f"  {note}")
    typer.echo(report.out)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


@app.command(
    "push",
    short_help="Upload a detector folder to the Hugging Face Hub.",
    epilog="Examples:\n\n\b\n"
    "  aidetect push runs/exp1 --repo me/my-detector --dry-run\n"
    "  aidetect push runs/exp1 --repo me/my-detector\n"
    "  HF_TOKEN=hf_xxx aidetect push runs/exp1 --repo me/my-detector --private",
)
def push(
    folder: Annotated[str, typer.Argument(help="A detector folder (config.json + "
                                          "model.safetensors).")],
    repo: Annotated[str, typer.Option("--repo", "-r", help="The Hub repository, owner/name.")],
    revision: Annotated[str | None, typer.Option(
        "--revision", help="The branch to commit to (created if absent). Default: main.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository as "
                                          "private.")] = False,
    message: Annotated[str | None, typer.Option("--message", "-m",
                                                help="The commit message.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the folder and list what would be uploaded, and where; "
                          "upload nothing.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Upload a detector folder to the Hugging Face Hub as it is, in one commit (token:
    HF_TOKEN or `hf auth login`).

    The folder must load as a detector (as scan loads it) and hold every licence file its
    config or model card names. Its files go up unchanged: its own README.md model card (one is
    written into the folder when there is none), config.json, model.safetensors, licence
    files. Hidden files and the run's resume state (train/) are left out.
    """
    from aidetect.cli.console import err_console
    from aidetect.publish import push_detector
    from aidetect.text import terminal_safe

    result = push_detector(folder, repo, revision=revision, private=private,
                           commit_message=message, dry_run=dry_run)
    target = f"hf://{result.repo_id}@{result.revision}"
    if dry_run:
        typer.echo(f"would upload to {target}:")
        for name in result.files:
            note = " (aidetect's card, written first: the folder has none)" \
                if result.card_written and name == "README.md" else ""
            typer.echo(f"  {terminal_safe(name)}{note}")
        for name in result.left_out:
            typer.echo(f"  left out: {terminal_safe(name)}")
        return
    if not quiet:
        if result.card_written:
            err_console.print(f"wrote {folder}/README.md (aidetect's card: the folder had none)",
                              markup=False, soft_wrap=True)
        err_console.print(f"pushed {len(result.files)} files of {folder} to {target}",
                          markup=False, soft_wrap=True)
    typer.echo(result.url)
