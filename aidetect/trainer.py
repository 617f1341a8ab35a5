"""The trainer: one `aidetect train` or `finetune` run, from the data to the detector folder.

dgs-net.md section 3 is the recipe: stage 1 trains a linear probe on frozen features, stage 2
LoRA with gradient surgery (`aidetect.steps` holds each step's loss and the precision it runs
in). The training state lives in `OUT/train/` (`aidetect.checkpoint`); under torchrun each rank
runs a Trainer (`aidetect.distributed`). The trainer never prints: it reports through events.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aidetect.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    METRICS_NAME,
    STATE_DIR,
    check_recipe,
    files_digest,
    load_trainable_state,
    make_recipe,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    to_cpu,
    trainable_state,
    truncate_metrics,
    write_checkpoint,
)
from aidetect.config import DEFAULT_THRESHOLD
from aidetect.dataset import (
    Augment,
    Batch,
    ImageDataset,
    epoch_order,
    find_labelled_images,
    make_loader,
    resolve_captions,
)
from aidetect.devices import train_workers
from aidetect.distributed import setup_distributed
from aidetect.errors import UsageError
from aidetect.evaluate import out_of_memory_error, predict
from aidetect.lora import lora_parameters
from aidetect.metrics import score_table
from aidetect.steps import (
    choose_precision,
    precompute_captions,
    set_checkpointing,
    stage1_loss,
    stage2_loss,
)
from aidetect.train import (
    EpochEnd,
    EpochStart,
    Event,
    Note,
    StepEnd,
    TrainJob,
    TrainResult,
)


class Trainer:
    """One training or finetuning run; `run()` does it all, resuming when asked."""

    def __init__(self, job: TrainJob, on_event: Callable[[Event], None] | None = None) -> None:
        self.job = job
        self.cfg = job.config
        self._on_event = on_event
        self.state_dir = Path(job.out) / STATE_DIR
        self.checkpoint_path = self.state_dir / CHECKPOINT_NAME
        self.metrics_path = self.state_dir / METRICS_NAME
        self.global_step = 0
        self.records = 0  # metrics.jsonl lines written, for truncation on resume
        self.skipped: dict[str, str] = {}
        self.validation: list[dict[str, Any]] = []
        self.position = (0, 0, 0)  # (stage, epoch, step) to continue from
        self.probe_head: nn.Linear | None = None
        self.text_head: nn.Linear | None = None
        self.teacher = None
        self.caption_features = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.start_from: dict[str, Any] | None = None
        # finetune: the licences the start detector carries, and the folder of their files
        self.inherited: tuple[list[Any], Path | None] = ([], None)

    # events and logs
    def emit(self, event: Event) -> None:
        if self._on_event is not None and self.dist.main:
            self._on_event(event)

    def log_record(self, record: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        self.records += 1
        self._metrics_file.write(json.dumps({"record": self.records, **record}) + "\n")
        self._metrics_file.flush()

    # --- setup -------------------------------------------------------------------------------
    def _check_paths(self) -> dict[str, Any] | None:
        out = Path(self.job.out)
        if self.job.resume:
            if self.checkpoint_path.is_file():
                return read_checkpoint(self.checkpoint_path)
            self.emit(Note(f"{self.checkpoint_path}: no checkpoint yet; starting from scratch"))
            return None
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file: choose a new or empty folder")
        if self.state_dir.exists() or (out / "config.json").exists():
            raise UsageError(
                f"--out {out} already holds a training run: pass --resume to continue it, or "
                "choose another --out"
            )
        found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if found:  # the run writes README.md, config.json, ...: never over the user's files
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise UsageError(
                f"--out {out} holds files this run did not write ({shown}): choose a new or "
                "empty folder (or pass --resume to continue a run there)"
            )
        return None

    def _build_detector(self):
        """The model a fresh run starts from; rebuilt the same way on resume (seeded)."""
        from aidetect.model import Detector

        seed_everything(self.cfg.seed)
        if self.job.kind == "train":
            if self.cfg.epochs > 0:
                # Before the image tower exists: the whole CLIP that encodes the captions is
                # gone again before training starts, so the two never share memory.
                self._encode_captions(self.job.backbone, self.job.pretrained, None)
            detector = Detector(backbone=self.job.backbone, pretrained=self.job.pretrained)
        else:
            from aidetect.loading import load_detector

            loaded = load_detector(self.job.weights, device="cpu")
            detector = loaded.detector
            self.start_from = {
                "reference": loaded.reference,
                "sha256": loaded.sha256,
                "revision": loaded.revision,
            }
            from aidetect.licences import licences_of_loaded

            self.inherited = licences_of_loaded(loaded)
            if detector.has_lora:
                detector.merge_lora()  # fresh LoRA goes on top of the effective weights
        detector.visual.requires_grad_(False)
        return detector.to(self.dist.device)

    # --- checkpoints -------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, Any]:
        return trainable_state(self.detector, probe_head=self.probe_head,
                               text_head=self.text_head)

    def save_checkpoint(self, stage: int, epoch: int, step: int, *, finished: bool = False,
                        state: dict[str, Any] | None = None) -> None:
        rng = self.dist.gather(rng_state())  # a collective: every rank takes part
        if not self.dist.main:
            return
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "recipe": self.recipe,
            "stage": stage,
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "records": self.records,
            "finished": finished,
            "state": state if state is not None else self.trainable_state(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng,
            "skipped": self.skipped,
            "validation": self.validation,
        }
        write_checkpoint(self.checkpoint_path, checkpoint)

    def _restore_progress(self, checkpoint: dict[str, Any]) -> None:
        """Counters, logs and skipped files; the tensors are restored once their stage is built."""
        self.global_step = checkpoint["global_step"]
        self.records = checkpoint["records"]
        self.skipped = dict(checkpoint["skipped"])
        self.validation = list(checkpoint["validation"])
        self.position = (checkpoint["stage"], checkpoint["epoch"], checkpoint["step"])
        if self.dist.main:
            truncate_metrics(self.metrics_path, self.records)

    def _restore_tensors(self, checkpoint: dict[str, Any]) -> None:
        load_trainable_state(checkpoint["state"], self.detector, probe_head=self.probe_head,
                             text_head=self.text_head)
        if checkpoint["optimizer"] is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint["rng"]
        set_rng_state(states[self.dist.rank] if len(states) == self.dist.world else states[0])

    # --- the stages --------------------------------------------------------------------------
    def _setup_stage1(self) -> None:
        # The detector's own head is the probe during stage 1: the stage-1 model is a detector.
        self.detector.eval()
        self.optimizer = torch.optim.Adam(
            self.detector.head.parameters(), lr=self.cfg.lr, betas=self.cfg.betas
        )

    def _encode_captions(self, backbone: str, pretrained: str | None,
                         quick_gelu: bool | None) -> None:
        if self.caption_features is None:
            self.caption_features = precompute_captions(
                self.captions.texts, backbone=backbone, pretrained=pretrained,
                quick_gelu=quick_gelu, device=self.dist.device, seed=self.cfg.seed,
            )

    def _setup_stage2(self) -> None:
        from aidetect.model import Teacher

        detector, cfg = self.detector, self.cfg
        self._encode_captions(detector.backbone, detector.base_pretrained, detector.quick_gelu)
        # Train: the probe (the stage-1 head) becomes the teacher's head and the image head
        # starts fresh, as in the published code. Finetune: the old detector is the teacher and
        # the image head starts where the old one was.
        self.probe_head = copy.deepcopy(detector.head)
        if self.job.kind == "train":
            detector.head = nn.Linear(detector.embed_dim, 1).to(self.dist.device)
        self.teacher = Teacher(detector, self.probe_head)
        detector.add_lora(cfg.lora)
        text_dim = self.caption_features.features.shape[1]
        self.text_head = nn.Linear(text_dim, 1).to(self.dist.device)
        detector.head.requires_grad_(True)
        self.optimizer = torch.optim.Adam(
            [
                *lora_parameters(detector.visual),
                *detector.head.parameters(),
                *self.text_head.parameters(),
            ],
            lr=cfg.lr,
            betas=cfg.betas,
        )
        set_checkpointing(detector, self.job.checkpointing)
        detector.train()  # LoRA dropout on; the teacher pass switches LoRA off

    def _stage1_step(self, images, labels, batch: Batch, share: float) -> torch.Tensor:
        loss = stage1_loss(self.detector, images, labels, self.precision)
        self.scaler.scale(loss * share).backward()
        part = loss.detach() * share
        zero = torch.zeros((), device=part.device)
        return torch.stack([part, part, zero, zero])  # total = the probe's BCE

    def _stage2_step(self, images, labels, batch: Batch, share: float) -> torch.Tensor:
        text = self.caption_features.lookup([self.captions.texts[i] for i in batch.indices])
        loss = stage2_loss(
            self.detector, self.teacher, images, labels, text,
            text_head=self.text_head, align_weight=self.cfg.align_weight * share,
            precision=self.precision,
        )
        self.scaler.scale(loss.total * share).backward()
        image, text_loss, align = loss.image * share, loss.text * share, loss.align * share**2
        total = image + text_loss + self.cfg.align_weight * align
        return torch.stack([total, image, text_loss, align]).detach()

    def _sync_grads(self) -> None:
        if self.dist.world == 1:
            return
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.dist.sum_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for param in params:
            size = param.numel()
            param.grad = flat[offset : offset + size].view_as(param).clone()
            offset += size

    def _train_stage(self, stage: int, epochs: int) -> None:
        step_fn = self._stage1_step if stage == 1 else self._stage2_step
        dataset, batch_size, dist = self.dataset, self.cfg.batch_size, self.dist
        start_stage, start_epoch, start_step = self.position
        for epoch in range(epochs):
            if (stage, epoch) < (start_stage, start_epoch):
                continue
            first = start_step if (stage, epoch) == (start_stage, start_epoch) else 0
            order = epoch_order(len(dataset), seed=self.cfg.seed, stage=stage, epoch=epoch)
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            mine = [b[dist.rank :: dist.world] for b in batches[first:]]
            dataset.stage, dataset.epoch = stage, epoch
            loader = make_loader(dataset, mine, workers=self.workers, seed=self.cfg.seed,
                                 pin_memory=dist.device.type == "cuda")
            self.emit(EpochStart(stage, epoch, epochs, len(batches), first))
            for step, batch in enumerate(loader, start=first + 1):
                self._note_failures(batch)
                count = dist.sum_(torch.tensor([len(batch)], device=dist.device))
                total_images = int(count.item())
                if total_images == 0:  # every image of this global batch was unreadable
                    continue
                share = len(batch) / total_images
                stats = torch.zeros(4, device=dist.device)
                try:
                    if len(batch):
                        images = batch.images.to(dist.device, non_blocking=True)
                        labels = batch.labels.to(dist.device)
                        stats = step_fn(images, labels, batch, share)
                    self._sync_grads()
                    # fp16: unscales, and skips the step when a gradient overflowed (the
                    # scaler then lowers its scale); otherwise the optimiser's step as is.
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                except torch.OutOfMemoryError:
                    raise out_of_memory_error(batch_size) from None
                self.optimizer.zero_grad(set_to_none=True)
                stats = dist.sum_(stats).tolist()
                self.global_step += 1
                self.log_record({
                    "stage": stage, "epoch": epoch, "step": step, "global_step": self.global_step,
                    "images": total_images, "loss": stats[0], "loss_image": stats[1],
                    "loss_text": stats[2], "loss_align": stats[3], "lr": self.cfg.lr,
                    "precision": self.precision.name, "time": time.time(),
                })
                self.emit(StepEnd(stage, epoch, step, len(batches), total_images, stats[0]))
                if self.job.save_every and self.global_step % self.job.save_every == 0:
                    self.save_checkpoint(stage, epoch, step)
            val = self._validate(stage, epoch)
            self.emit(EpochEnd(stage, epoch, val))
            self.save_checkpoint(stage, epoch + 1, 0)

    def _note_failures(self, batch: Batch) -> None:
        if not batch.failures and self.dist.world == 1:
            return
        for failures in self.dist.gather([(f.path, f.reason) for f in batch.failures]):
            for path, reason in failures:
                if path not in self.skipped:
                    self.skipped[path] = reason
                    self.emit(Note(f"skipping unreadable training image {path}: {reason}",
                                   warning=True))

    def _validate(self, stage: int, epoch: int) -> dict[str, Any] | None:
        if self.val_set is None:
            return None
        dataset = ImageDataset(
            self.val_set.paths, self.val_set.labels, preprocess=self.detector.preprocess_config
        )
        mine = list(range(self.dist.rank, len(dataset), self.dist.world))
        found = predict(
            self.detector, dataset, device=self.dist.device, batch_size=self.cfg.batch_size,
            workers=self.workers, indices=mine, dtype=self.precision.dtype,
        )
        parts = self.dist.gather((found.labels.tolist(), found.scores.tolist()))
        labels = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
        scores = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in parts])
        # Threshold 0.5, as the paper reports; calibration is `eval`'s job.
        result = {"stage": stage, "epoch": epoch,
                  **score_table(labels, scores, DEFAULT_THRESHOLD).to_dict()}
        self.validation.append(result)
        self.log_record({"stage": stage, "epoch": epoch, "global_step": self.global_step,
                         "val": {k: v for k, v in result.items() if k not in ("stage", "epoch")}})
        return result

    # --- the end -----------------------------------------------------------------------------
    def _finish(self) -> None:
        from aidetect.card import render_card
        from aidetect.licences import copy_licence_files

        state = to_cpu(self.trainable_state())  # LoRA and heads as trained, before the merge
        if self.dist.main:
            detector = self.detector
            if detector.has_lora:
                detector.merge_lora()
            detector.threshold = DEFAULT_THRESHOLD  # a calibration of the old weights is void
            detector.to("cpu").eval()
            out = Path(self.job.out)
            info = self._card_info()
            detector.save_pretrained(out, licences=info.built_from(),
                                     model_card_kwargs={"card_text": render_card(info)})
            copy_licence_files(self.inherited[0], self.inherited[1], out)
        self.dist.barrier()
        self.save_checkpoint(*self.position, finished=True, state=state)

    def _card_info(self):
        from aidetect.card import CardInfo, training_recipe

        recipe = training_recipe(self.cfg, self.job.kind, precision=self.precision.describe(),
                                 steps=self.global_step, processes=self.dist.world)
        start = None
        if self.start_from:
            start = f"{self.start_from['reference']} (sha256 {self.start_from['sha256'][:12]})"
        return CardInfo(
            kind=self.job.kind,
            backbone=self.detector.backbone,
            base_pretrained=self.detector.base_pretrained,
            data=str(self.job.data),
            data_summary=self.image_set.describe(),
            captions=self.captions.source,
            recipe=recipe,
            start_from=start,
            skipped=len(self.skipped),
            validation=str(self.job.val) if self.job.val else None,
            metrics=self.validation,
            threshold=DEFAULT_THRESHOLD,
            licences=self.inherited[0],
        )

    # --- entry point -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.dist = setup_distributed(self.job.device)
        try:
            result = self._run()
            # No rank tears its process group down while another is still in a collective
            # (gloo aborts the process then: "terminate called without an active exception").
            self.dist.barrier()
            return result
        finally:
            if self.dist.owns_group:
                torch.distributed.destroy_process_group()

    def _run(self) -> TrainResult:
        job, cfg, dist = self.job, self.cfg, self.dist
        self.workers = train_workers(dist.device) if job.workers is None else job.workers
        self.precision = choose_precision(dist.device, job.precision)
        self.scaler = self.precision.grad_scaler()
        if cfg.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        checkpoint = self._check_paths()  # first: a refused --out costs no time
        dist.barrier()  # every rank has looked at OUT before rank 0 writes into it
        self.image_set = find_labelled_images(job.data, classes=job.classes)
        self.files_digest = files_digest(self.image_set)
        self.captions = resolve_captions(self.image_set, job.captions)
        self.val_set = find_labelled_images(job.val, what="--val") if job.val else None
        self.emit(Note(f"training data: {self.image_set.describe()}"))
        self.emit(Note(f"captions: {self.captions.source}"))
        self.emit(Note(f"precision: {self.precision.describe()}"
                       + ("; activation checkpointing" if job.checkpointing else "")))
        if checkpoint is not None and checkpoint["finished"]:
            self.emit(Note(f"{job.out}: this run has already finished; nothing to resume"))
            return TrainResult(Path(job.out), checkpoint["global_step"],
                               dict(checkpoint["skipped"]), list(checkpoint["validation"]),
                               already_finished=True, main_process=dist.main)
        self.detector = self._build_detector()
        self.recipe = make_recipe(
            self.job, files=self.files_digest, captions=self.captions.source,
            precision=self.precision.name,
            weights_sha256=self.start_from["sha256"] if self.start_from else None,
        )
        if checkpoint is not None:
            check_recipe(self.checkpoint_path, checkpoint, self.recipe)
            self._restore_progress(checkpoint)
            stage, epoch, step = self.position
            self.emit(Note(f"resuming at stage {stage}, epoch {epoch + 1}, step {step} "
                           f"({self.global_step} steps done)"))
        self.dataset = ImageDataset(
            self.image_set.paths,
            self.image_set.labels,
            preprocess=self.detector.preprocess_config,
            train=True,
            augment=Augment(cfg.blur_prob, cfg.blur_sigma, cfg.jpeg_prob, cfg.jpeg_quality),
            seed=cfg.seed,
        )
        if dist.main:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            # A fresh start drops the lines of an attempt killed before its first checkpoint.
            mode = "a" if checkpoint is not None else "w"
            self._metrics_file = open(self.metrics_path, mode, encoding="utf-8")  # noqa: SIM115
        try:
            stage_of_checkpoint = self.position[0] if checkpoint is not None else None
            if job.kind == "train" and stage_of_checkpoint in (None, 1):
                self._setup_stage1()
                if checkpoint is not None:
                    self._restore_tensors(checkpoint)
                self._train_stage(1, cfg.probe_epochs)
                self.position = (2, 0, 0)
            if cfg.epochs > 0 or job.kind == "finetune":
                # (`train --epochs 0` stops at the stage-1 probe: a UnivFD-style detector.)
                self._setup_stage2()
                if checkpoint is not None and stage_of_checkpoint == 2:
                    self._restore_tensors(checkpoint)
                self._train_stage(2, cfg.epochs)
            self.position = (2, cfg.epochs, 0)
            self._finish()
        finally:
            if dist.main:
                self._metrics_file.close()
        if self.skipped:
            self.emit(Note(f"{len(self.skipped)} unreadable training images were skipped",
                           warning=True))
        return TrainResult(Path(job.out), self.global_step, self.skipped, self.validation,
                           main_process=dist.main)
