"""Labelled image folders for training and evaluation (dgs-net.md sections 3 and 5).

Layouts, the field's convention: `DATA/0_real` and `DATA/1_fake`, or one level of classes,
`DATA/<class>/0_real` and `DATA/<class>/1_fake`; folder names are matched without regard to
case, and `real` / `fake` are accepted as aliases. A benchmark is a folder of such layouts, one
per subset. Captions for DGS-Net's text head come from a JSON file, else the class folder name,
else a generic prompt.

`ImageDataset` decodes lazily and never raises on a bad file: it returns a `Failure`, which
`collate` sets aside, so an unreadable image cannot kill a DataLoader worker. Every random
choice of an item (tile order, flip, blur, JPEG) is drawn from a generator keyed by (seed,
epoch, index), so a batch is the same whichever worker builds it and whenever it is rebuilt:
that is what makes resuming a run exact.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from aidetect.config import PreprocessConfig
from aidetect.data import IMAGE_EXTENSIONS
from aidetect.errors import ImageError, UsageError
from aidetect.preprocess import preprocess_tensor, to_tensor

REAL_DIRS = ("0_real", "real")
FAKE_DIRS = ("1_fake", "fake")
GENERIC_CAPTION = "a photo"  # when neither a captions file nor a class name says more


# --- finding labelled images -----------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1: AI-generated, 0: real
    group: str | None  # the class folder, None in a flat layout


@dataclass(frozen=True)
class ImageSet:
    """The labelled images of one layout, in a fixed (sorted) order."""

    root: Path
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]  # empty for a flat layout

    @property
    def n_real(self) -> int:
        return sum(1 for s in self.samples if s.label == 0)

    @property
    def n_fake(self) -> int:
        return len(self.samples) - self.n_real

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def describe(self) -> str:
        kinds = f" in {len(self.classes)} classes" if self.classes else ""
        return f"{self.n_real} real and {self.n_fake} AI-generated images{kinds}"


def _label_dirs(folder: Path) -> tuple[list[Path], list[Path]]:
    real, fake = [], []
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            name = child.name.lower()
            if name in REAL_DIRS:
                real.append(child)
            elif name in FAKE_DIRS:
                fake.append(child)
    return real, fake


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def is_layout(folder: Path) -> bool:
    """Whether `folder` holds labelled images in one of the two layouts."""
    real, fake = _label_dirs(folder)
    if real or fake:
        return True
    return any(
        child.is_dir() and any(_label_dirs(child)) for child in folder.iterdir()
    )


def find_labelled_images(
    root: str | Path, *, classes: Sequence[str] | None = None, what: str = "--data"
) -> ImageSet:
    """The labelled images under `root`; `classes` picks class folders (all by default).

    Raises `UsageError` when the folder is no layout, a class is missing, or there are no real
    or no AI-generated images; the message says what was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{what} {root}: no such folder")
    real_dirs, fake_dirs = _label_dirs(root)
    samples: list[Sample] = []
    found_classes: list[str] = []
    if real_dirs or fake_dirs:
        if classes:
            raise UsageError(
                f"{what} {root}: --classes was given but this folder has no class folders "
                f"(it holds {', '.join(d.name for d in real_dirs + fake_dirs)} directly)"
            )
        for label, dirs in ((0, real_dirs), (1, fake_dirs)):
            samples += [Sample(p, label, None) for d in dirs for p in _images_under(d)]
    else:
        class_dirs = {
            c.name: c for c in sorted(root.iterdir()) if c.is_dir() and any(_label_dirs(c))
        }
        if not class_dirs:
            children = sorted(c.name for c in root.iterdir() if c.is_dir())
            seen = ", ".join(children[:8]) + (", ..." if len(children) > 8 else "")
            raise UsageError(
                f"{what} {root}: expected 0_real/ and 1_fake/ folders, or <class>/0_real and "
                f"<class>/1_fake; found {('folders ' + seen) if children else 'no folders'}"
            )
        if classes:
            by_lower = {name.lower(): name for name in class_dirs}
            missing = [c for c in classes if c.lower() not in by_lower]
            if missing:
                raise UsageError(
                    f"{what} {root}: no class folder {', '.join(missing)} "
                    f"(found {', '.join(class_dirs)})"
                )
            chosen = [by_lower[c.lower()] for c in dict.fromkeys(classes)]
        else:
            chosen = list(class_dirs)
        for name in chosen:
            real, fake = _label_dirs(class_dirs[name])
            for label, dirs in ((0, real), (1, fake)):
                samples += [Sample(p, label, name) for d in dirs for p in _images_under(d)]
        found_classes = chosen
    image_set = ImageSet(root=root, samples=tuple(samples), classes=tuple(found_classes))
    if image_set.n_real == 0 or image_set.n_fake == 0:
        raise UsageError(
            f"{what} {root}: found {image_set.describe()}; both real (0_real/) and "
            "AI-generated (1_fake/) images are needed"
        )
    return image_set


def find_subsets(bench: str | Path) -> list[tuple[str, ImageSet]]:
    """The test subsets of a benchmark: `BENCH/<subset>/` layouts, or BENCH itself if it is one.

    Folders that hold no layout at all (notes, caches) are ignored.
    """
    bench = Path(bench)
    if not bench.is_dir():
        raise UsageError(f"--data {bench}: no such folder")
    real, fake = _label_dirs(bench)
    if real or fake:
        return [(bench.name, find_labelled_images(bench))]
    subsets = [
        (child.name, find_labelled_images(child, what="subset"))
        for child in sorted(bench.iterdir())
        if child.is_dir() and is_layout(child)
    ]
    if not subsets:
        raise UsageError(
            f"--data {bench}: no test subsets (expected BENCH/<subset>/0_real and 1_fake, "
            "or BENCH/<subset>/<class>/0_real and 1_fake)"
        )
    return subsets


# --- captions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Captions:
    texts: tuple[str, ...]  # one per sample, in the image set's order
    source: str  # how they were obtained, for the log and the model card


def class_caption(name: str) -> str:
    return "a photo of a " + name.replace("_", " ").replace("-", " ").strip()


def resolve_captions(image_set: ImageSet, captions_file: str | Path | None = None) -> Captions:
    """A caption per image: the captions file (paths relative to DATA), else class, else generic."""
    mapping: dict[str, str] = {}
    if captions_file is not None:
        try:
            raw = json.loads(Path(captions_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"--captions {captions_file}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UsageError(f"--captions {captions_file}: not valid JSON ({error})") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise UsageError(
                f"--captions {captions_file}: expected a JSON object mapping image paths "
                "(relative to --data) to caption strings"
            )
        mapping = {k.replace("\\", "/").removeprefix("./"): v for k, v in raw.items()}
    texts, counts = [], {"file": 0, "class": 0, "generic": 0}
    for sample in image_set.samples:
        key = sample.path.relative_to(image_set.root).as_posix()
        if key in mapping:
            texts.append(mapping[key])
            counts["file"] += 1
        elif sample.group is not None:
            texts.append(class_caption(sample.group))
            counts["class"] += 1
        else:
            texts.append(GENERIC_CAPTION)
            counts["generic"] += 1
    names = {
        "file": f"{captions_file}",
        "class": "class folder names",
        "generic": f'the generic prompt "{GENERIC_CAPTION}"',
    }
    used = [f"{names[k]} ({n})" for k, n in counts.items() if n]
    return Captions(texts=tuple(texts), source=", ".join(used))


# --- perturbations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Random training augmentations of the published code (off unless a probability is > 0)."""

    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur of standard deviation `sigma` px (PIL's radius is the standard deviation)."""
    return image.filter(ImageFilter.GaussianBlur(radius=sigma)) if sigma > 0 else image


def jpeg_recompress(image: Image.Image, quality: int) -> Image.Image:
    """The image after one JPEG round trip at `quality` (1-100), decoded to RGB."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def perturb(
    image: Image.Image, *, blur_sigma: float | None = None, jpeg_quality: int | None = None
) -> Image.Image:
    """Fixed robustness perturbations of `eval`: blur first, then JPEG (the published order)."""
    if blur_sigma:
        image = gaussian_blur(image, blur_sigma)
    if jpeg_quality is not None:
        image = jpeg_recompress(image, jpeg_quality)
    return image


def augment(image: Image.Image, config: Augment, rng: np.random.Generator) -> Image.Image:
    """Random blur then random JPEG, each with its probability; every draw comes from `rng`."""
    # Draw every number whatever the outcome, so one option never shifts another's draws.
    do_blur, sigma = rng.random() < config.blur_prob, rng.uniform(*config.blur_sigma)
    do_jpeg = rng.random() < config.jpeg_prob
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    if do_blur:
        image = gaussian_blur(image, float(sigma))
    if do_jpeg:
        image = jpeg_recompress(image, quality)
    return image


# --- the dataset -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """An item that could not be decoded or preprocessed."""

    index: int
    path: str
    reason: str


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S)
    labels: torch.Tensor  # (B,) float, 1 = AI-generated
    indices: list[int]  # dataset positions of the images
    failures: list[Failure]

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> Batch:
        """Called by a DataLoader with `pin_memory=True`."""
        self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        return self


def item_rng(seed: int, stage: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's random choices: the same in any worker, on any resume."""
    return np.random.default_rng([seed, stage, epoch, index])


class ImageDataset(torch.utils.data.Dataset):
    """Files and labels -> (image tensor, label, index), or a `Failure` for an unreadable file.

    Args:
        paths, labels: the images and their labels (1 = AI-generated).
        preprocess: the detector's preprocessing.
        train: random tile order and flip (and `augment`), keyed by (seed, epoch, index).
        augment: training augmentations; None for none.
        blur_sigma, jpeg_quality: fixed perturbations for robustness evaluation.
        seed: the run's seed. Set `stage` and `epoch` before iterating so that each epoch
            draws afresh.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        *,
        preprocess: PreprocessConfig,
        train: bool = False,
        augment: Augment | None = None,
        blur_sigma: float | None = None,
        jpeg_quality: int | None = None,
        seed: int = 0,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths for {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.preprocess = preprocess
        self.train = train
        self.augment = augment
        self.blur_sigma = blur_sigma
        self.jpeg_quality = jpeg_quality
        self.seed = seed
        self.stage = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | Failure:
        from aidetect.data import open_image

        path = self.paths[index]
        try:
            image = open_image(path).image
            generator = None
            if self.train:
                rng = item_rng(self.seed, self.stage, self.epoch, index)
                if self.augment is not None:
                    image = augment(image, self.augment, rng)
                generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            image = perturb(image, blur_sigma=self.blur_sigma, jpeg_quality=self.jpeg_quality)
            tensor = preprocess_tensor(
                to_tensor(image), self.preprocess, train=self.train, generator=generator
            )
        except ImageError as error:
            return Failure(index, path, error.message)
        except OSError as error:  # vanished or unreadable between listing and loading
            return Failure(index, path, error.strerror or str(error))
        return tensor, self.labels[index], index


def collate(items: list[tuple[torch.Tensor, int, int] | Failure]) -> Batch:
    """Stack the good items; set the failures aside (a batch may end up smaller, or empty)."""
    good = [item for item in items if not isinstance(item, Failure)]
    failures = [item for item in items if isinstance(item, Failure)]
    if good:
        images = torch.stack([item[0] for item in good])
    else:
        images = torch.empty(0, 3, 0, 0)
    labels = torch.tensor([float(item[1]) for item in good])
    return Batch(images=images, labels=labels, indices=[item[2] for item in good],
                 failures=failures)


def epoch_order(size: int, *, seed: int, stage: int, epoch: int) -> list[int]:
    """The seeded permutation of one epoch: a function of (seed, stage, epoch) only."""
    key = np.random.SeedSequence([seed, stage, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(key[0]) << 32 | int(key[1]))
    return torch.randperm(size, generator=generator).tolist()


def make_loader(
    dataset: ImageDataset,
    batches: Sequence[Sequence[int]],
    *,
    workers: int,
    seed: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader that yields `Batch`es of exactly these index lists, in this order.

    The loader gets its own generator, so starting it draws nothing from torch's global RNG
    (LoRA dropout draws from that one, and a resumed run must see the same stream).
    `pin_memory` (for CUDA) lets the copy to the GPU overlap with compute.
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[list(b) for b in batches],
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        pin_memory=pin_memory,
    )
