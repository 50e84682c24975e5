"""Distillation (train.teacher): the recipe's model learns from a trained teacher's softened outputs.

Each image's loss is (1 - alpha) x the label loss + alpha x T^2 x KL(teacher_T || student_T), where
_T is softmax(logits / T) (Hinton et al., 2015: T^2 keeps the soft term's gradients on the label
term's scale as T grows). Photos of data.unlabeled (toolkit.train.distill_data) carry the target
UNLABELLED: only the KL term counts for them.

The teacher is a toolkit checkpoint (a run folder: its best.pt, else last.pt), read with the same
checks and errors as --resume, and must know the same labels in the same order. It sees each image
through its own preprocessing: cached logits come from its own eval transform of the photo; per batch,
it sees the student's augmented view (same seed, so the same flip and shift) rendered at its own size,
mean and std (TeacherViews): "consistent teaching" (Beyer et al., 2022). Blowing the student's 32 px
tensor up to a 64 px teacher's input instead cost a briefly trained Fashion-MNIST teacher 9.5
validation points (80.5% -> 71.0%): it never saw such blurred inputs. A teacher whose input is the
student's (same size, mean and std) labels the student's own batch.

Teacher logits are computed once, before the first epoch, when the augmentation allows it
(train.distill_cache auto: the training pipeline is deterministic; always: the teacher sees the
un-augmented eval view while the student sees augmented ones), else once per batch (never, or auto with
random augmentation), so that teacher and student see the same augmented pixels.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from toolkit import artifacts
from toolkit import recipe as recipe_mod
from toolkit.errors import UserError
from toolkit.preprocess import Preprocess
from toolkit.train.data import ImageDataset, build_augment
from toolkit.train.distributed import IGNORE
from toolkit.train.evaluate import collect_logits
from toolkit.train.model import model_from_checkpoint
from toolkit.train.sampling import SeededAugmentation, decode_index

UNLABELLED = -1  # the target of a photo from data.unlabeled: the teacher's term only (IGNORE is padding)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float,
                 temperature: float, criterion) -> torch.Tensor:
    """The batch's summed loss: (1 - alpha) x criterion (summed, ignore_index IGNORE) over the labelled
    images + alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T)) over every real image."""
    student, teacher = student.float(), teacher.float()
    labelled = torch.where(targets >= 0, targets, torch.full_like(targets, IGNORE))
    label_term = criterion(student, labelled) if alpha < 1 else student.new_zeros(())
    log_p = F.log_softmax(student / temperature, dim=1)
    log_q = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=1)
    kl_term = (kl * (targets != IGNORE)).sum()
    return (1 - alpha) * label_term + alpha * temperature ** 2 * kl_term


def _labels_text(labels: list) -> str:
    labels = [str(x) for x in labels]
    return "[" + ", ".join(labels if len(labels) <= 8 else labels[:6] + ["...", labels[-1]]) + \
        f"] ({len(labels)} classes)"


def _read_teacher(source: str):
    """(model in eval mode, checkpoint) of a run folder or checkpoint; every problem is the --resume error,
    led by 'train.teacher: '."""
    try:
        return model_from_checkpoint(artifacts.run_checkpoint(source))
    except UserError as exc:
        raise UserError(f"train.teacher: {exc}") from None


@dataclasses.dataclass
class Teacher:
    """A trained model that labels the student's images, each through its own preprocessing."""
    model: torch.nn.Module
    preprocess: Preprocess  # the teacher's own eval transform (its recipe's)
    student_preprocess: Preprocess
    device: torch.device
    autocast: object = None  # the student's autocast dtype, or None
    path: str = ""
    section: object = None  # the teacher recipe's preprocess section (TeacherViews renders its views with it)

    @property
    def same_input(self) -> bool:
        """True when the student's input tensor is the teacher's too (same size, mean and std)."""
        a, b = self.preprocess, self.student_preprocess
        return (a.crop, tuple(a.mean), tuple(a.std)) == (b.crop, tuple(b.mean), tuple(b.std))

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits for a batch of its inputs: its own views of the student's samples
        (TeacherViews), or the student's batch itself when the two inputs are alike (same_input)."""
        self.model.eval()
        x = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return self.model(x).float()


def load_teacher(recipe, labels: list, device: torch.device, autocast=None) -> Teacher:
    """train.teacher of `recipe`, checked against the student's `labels` (same classes, same order)."""
    source = str(recipe.train.teacher)
    model, ckpt = _read_teacher(source)
    theirs = [str(x) for x in ckpt["labels"]]
    if theirs != [str(x) for x in labels]:
        raise UserError(f"train.teacher: {source} was trained on the labels {_labels_text(theirs)}, but this "
                        f"recipe's data has {_labels_text(labels)}; expected the same labels in the same order")
    teacher_recipe = recipe_mod.from_dict(ckpt["recipe"], source=f"{source} (recipe inside the checkpoint)",
                                          check_paths=False)
    preprocess = Preprocess(**dataclasses.asdict(teacher_recipe.preprocess))
    student = Preprocess(**dataclasses.asdict(recipe.preprocess))
    return Teacher(model.to(device).eval(), preprocess, student, device, autocast, artifacts.run_checkpoint(source),
                   teacher_recipe.preprocess)


def deterministic(augment, preprocess: Preprocess, draws: int = 4) -> bool:
    """Whether the training pipeline gives the same pixels on every draw (then cached logits are exact)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (preprocess.resize, preprocess.resize * 4 // 3 + 1, 3), dtype=np.uint8)
    outputs = []
    for seed in range(draws):
        augment.set_random_seed(seed)
        outputs.append(augment(image=image)["image"])
    augment.set_random_seed(None)
    return all(np.array_equal(outputs[0], o) for o in outputs[1:])


def wants_cache(mode: str, augment, preprocess: Preprocess) -> bool:
    """train.distill_cache: always, never, or auto (cache when the augmentation is deterministic)."""
    return mode == "always" or (mode == "auto" and deterministic(augment, preprocess))


class Distiller:
    """The teacher's logits for each training batch (from the cache or computed now) and the loss."""

    def __init__(self, teacher: Teacher, alpha: float, temperature: float):
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature
        self.cache: torch.Tensor | None = None  # [images, classes] float32, by training index
        self.cache_seconds = 0.0

    def build_cache(self, items: list, max_pixels: int, batch_size: int, workers: int = 0) -> None:
        """The teacher's logits of every training item, through the teacher's own eval transform."""
        started = time.perf_counter()
        # A generator of its own: iterating a DataLoader draws a seed, which must not shift the training RNG.
        loader = DataLoader(ImageDataset(items, self.teacher.preprocess, max_pixels=max_pixels),
                            batch_size=batch_size, num_workers=workers, generator=torch.Generator().manual_seed(0))
        t = self.teacher
        logits, _, _ = collect_logits(t.model, loader, t.device, t.autocast)
        self.cache = torch.from_numpy(logits)
        self.cache_seconds = time.perf_counter() - started

    def soft_targets(self, images: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits for this batch: rows of the cache (`extra`: the training indices), or the
        teacher run on its own views (`extra`, from TeacherViews), else on `images` (the same input)."""
        if self.cache is not None:
            return self.cache[extra.cpu()].to(self.teacher.device)
        return self.teacher.logits(images if extra is None else extra)

    def with_own_views(self, train_set, items: list, recipe) -> "TeacherViews":
        """`train_set` (a SeededAugmentation of `items`) with the teacher's own view of each sample: the
        recipe's augmentation drawn with train_set's seeds, rendered at the teacher's preprocessing."""
        own = dataclasses.replace(recipe, preprocess=self.teacher.section)
        views = ImageDataset(items, self.teacher.preprocess, augment=build_augment(own),
                             max_pixels=recipe.data.max_pixels)
        return TeacherViews(train_set, SeededAugmentation(views, train_set.seed))  # the same draws

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, criterion):
        return distill_loss(student, teacher, targets, self.alpha, self.temperature, criterion)

    def describe(self) -> dict:
        t = self.teacher
        return {"teacher": t.path, "alpha": self.alpha, "temperature": self.temperature,
                "teacher_logits": "cached" if self.cache is not None else "per_batch",
                "cache_seconds": round(self.cache_seconds, 3), "cached_images": 0 if self.cache is None else
                len(self.cache), "teacher_input": self._input_text()}

    def _input_text(self) -> str:
        t = self.teacher
        own = f"{t.preprocess.crop} px, mean {list(t.preprocess.mean)}, std {list(t.preprocess.std)}"
        if self.cache is not None:   # cached: one eval view a photo, whatever the student's augmentation
            return f"its own eval view of each photo, {own}"
        if t.same_input:
            return "same as the student's"
        return f"the student's augmented view rendered at {own}"


class TeacherViews(Dataset):
    """A SeededAugmentation's samples with the teacher's view of each: (image, target, teacher's image).
    `teacher_set` is the same items and augmentation rendered at the teacher's preprocessing, seeded
    alike, so both nets see the same flip and shift (the spec's Resize follows each one's crop)."""

    def __init__(self, inner, teacher_set):
        self.inner, self.teacher_set = inner, teacher_set

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, encoded: int):
        image, target = self.inner[encoded]
        return image, target, self.teacher_set[encoded][0]


class WithIndex(Dataset):
    """A SeededAugmentation's samples with their training index (for the cache): (image, target, index)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, encoded: int):
        image, target = self.inner[encoded]
        return image, target, decode_index(encoded, len(self.inner))[1]
