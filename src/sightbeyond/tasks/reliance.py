"""Image reliance: how much of what a multimodal model does depends on the image it is shown.

On held-out records no training step has seen, the assistant-token loss (nats per supervised token, each record's
mean) with the record's own image (`right`), with another record's (`deranged`: one fixed, seeded permutation
without a fixed point) and with a blank one (`blank`: the image processor's mean colour, all zeros once
normalised); the gap is deranged minus right. A model that ignores its image has a gap of zero whatever its loss; one
that reads it pays for the wrong image. Batches are built by the training collator itself, so a record is scored on
exactly the tokens training supervises.

Every process of a distributed run scores every batch, in the same order: under FSDP or ZeRO-3 each forward gathers
the sharded parameters, which needs every process to make the same calls.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONDITIONS = ("right", "deranged", "blank")
PREFIX = "reliance"  # metric names: reliance/loss_right, reliance/loss_deranged, reliance/loss_blank, reliance/gap


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point: one cycle through a shuffled order."""
    if n < 2:
        raise ValueError(f"a derangement needs two records or more, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for a, b in zip(order, order[1:] + order[:1]):
        perm[a] = b
    return perm


def blank_image(image_processor) -> Image.Image:
    """An image of the processor's mean colour at its input size: zero everywhere once normalised."""
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    size = (crop["width"], crop["height"]) if "width" in crop else (crop["shortest_edge"],) * 2
    return Image.new("RGB", size, tuple(round(255 * m) for m in image_processor.image_mean))


@dataclass
class Reliance:
    ids: list[str]
    losses: dict[str, list[float]]  # condition -> each record's mean loss over its supervised tokens

    def metrics(self) -> dict[str, float]:
        means = {f"{PREFIX}/loss_{c}": float(np.mean(v)) for c, v in self.losses.items()}
        return means | {f"{PREFIX}/gap": means[f"{PREFIX}/loss_deranged"] - means[f"{PREFIX}/loss_right"]}

    def table(self) -> dict[str, list]:
        """Per record, as MLflow's log_table takes it: what the report's intervals resample."""
        return {"id": self.ids, **{f"loss_{c}": v for c, v in self.losses.items()}}


class RelianceProbe:
    """The held-out `rows` (TRL's conversational rows with `images`), their deranged and blank versions, scored by
    `collator` batches of `batch_size`."""

    def __init__(self, rows: list[dict], collator, image_processor, *, batch_size: int, seed: int):
        if any(len(r.get("images") or []) != 1 for r in rows):
            raise ValueError("image reliance is measured on records with one image each")
        perm, blank = derangement(len(rows), seed), blank_image(image_processor)
        self.ids = [str(r["id"]) for r in rows]
        self.rows = {"right": rows,
                     "deranged": [dict(r, images=rows[perm[i]]["images"]) for i, r in enumerate(rows)],
                     "blank": [dict(r, images=[blank]) for r in rows]}
        self.collator, self.batch_size = collator, batch_size

    @torch.no_grad()
    def run(self, model, autocast_dtype: torch.dtype | None = None) -> Reliance:
        """Each condition's per-record losses for the model's current weights (in its current mode: the caller puts it
        in eval mode); `autocast_dtype` runs the forward passes under CPU/CUDA autocast, as training does."""
        device = next(model.parameters()).device
        losses = {}
        for condition, rows in self.rows.items():
            losses[condition] = []
            for start in range(0, len(rows), self.batch_size):
                batch = self.collator([dict(r) for r in rows[start:start + self.batch_size]])
                labels = batch.pop("labels").to(device)
                inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                    logits = model(**inputs).logits
                losses[condition] += record_losses(logits, labels)
        return Reliance(self.ids, losses)


def record_losses(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each row's mean next-token loss over its supervised positions (labels other than -100)."""
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100,
                                            reduction="none")
    counts = (targets != -100).sum(1)
    if (counts == 0).any():
        raise ValueError("a held-out record has no supervised token left (max_length cut it?)")
    return (nll.sum(1) / counts).tolist()


HELDOUT = "heldout"  # the prepared sets' split that no training step sees (data/prepare.py writes it)


@dataclass(frozen=True)
class Family:
    """The eval_mm stage's family (see mme.py) for image reliance, on the held-out records of the tuned model's
    prepared set `split`, batched by TRL's collator as stage 2 batched them (`max_length`, the model's own
    `chat_template`, whatever template the other benchmarks are asked in)."""

    split: Path
    max_length: int
    seed: int
    chat_template: str | None = None

    def inputs(self, cfg) -> list[Path]:
        return [self.split]

    def read(self, cfg) -> tuple[list[dict], dict[Path, str]]:
        from datasets import load_from_disk

        splits = load_from_disk(str(self.split), keep_in_memory=True)
        if HELDOUT not in splits or len(splits[HELDOUT]) < 2:
            raise FileNotFoundError(f"{self.split}: no held-out records to measure image reliance on (prepare.heldout "
                                    "is 0 or 1); drop `reliance` from eval_mm.benchmarks or hold some out")
        return list(splits[HELDOUT]), {}  # its images are in the dataset, checked by `prepare`

    def evaluate(self, ask, rows: list[dict], cfg) -> dict[str, float]:
        import mlflow
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        collator = DataCollatorForVisionLanguageModeling(ask.processor, max_length=self.max_length,
                                                         assistant_only_loss=True, chat_template=self.chat_template)
        result = RelianceProbe(rows, collator, ask.processor.image_processor, batch_size=cfg.batch_size,
                               seed=self.seed).run(ask.model)
        mlflow.log_table(result.table(), artifact_file="reliance.json")
        return result.metrics()
