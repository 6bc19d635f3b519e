"""Where the image signal is lost on the tiny backbone: can the LLM read its context, and does POPE follow?

Scores every answer by logit(" Yes") - logit(" No") at the answer position and prints the AUC of present against absent
objects (0.5 is chance; unlike accuracy it does not depend on where a yes-biased model puts its threshold) for:
- `llm reads text`: the base LLM, with a ShapesWorld caption in words where the image goes, then a POPE question
  ("Is there a star in the image?") about a present or an absent shape;
- `pope after stage 1`: the base LLM with the stage-1 projector, on POPE-random;
- `pope after stage 2 <variant>`: each image-tuned stage-2 model of the grid, on POPE-random.

Run after `dvc repro`, from the repo root: `.venv/bin/python benchmarks/pope_diagnosis.py`.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from sightbeyond.config import load_params
from sightbeyond.data import shapesworld as sw
from sightbeyond.evaluation.mm_stage import read_pope
from sightbeyond.model.extract import load_tuned
from sightbeyond.model.llava import build_llava, language_model_view, load_processor
from sightbeyond.training.common import stage1_dir


@torch.inference_mode()
def yes_minus_no(model, processor, conversations: list[list[dict]], images: list[Image.Image] | None) -> list[float]:
    tokenizer = processor.tokenizer
    yes, no = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))[0] for w in (" Yes", " No"))
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    if images is None:
        inputs = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    else:
        inputs = processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt",
                           add_special_tokens=False)
    logits = model(**inputs).logits[:, -1]
    return (logits[:, yes] - logits[:, no]).tolist()


def text_questions(n_scenes: int, seed: int = 99) -> tuple[list[list[dict]], list[bool]]:
    rng, conversations, present_labels = random.Random(seed), [], []
    for _ in range(n_scenes):
        scene = sw.sample_scene(rng, 3)
        present = [s.kind for s in scene]
        absent = [k for k in sw.SHAPES if k not in present]
        for kind, there in ((rng.choice(present), True), (rng.choice(absent), False)):
            question = f"{sw.caption(scene)}\nIs there {sw.article(kind)} {kind} in the image?"
            conversations.append([{"role": "user", "content": [{"type": "text", "text": question}]}])
            present_labels.append(there)
    return conversations, present_labels


def pope_auc(model, processor, rows: list[dict], images_dir: Path, batch: int = 50) -> float:
    scores = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["text"]}]}]
                         for r in chunk]
        images = [Image.open(images_dir / r["image"]).convert("RGB") for r in chunk]
        scores += yes_minus_no(model, processor, conversations, images)
    return roc_auc_score([r["label"] == "yes" for r in rows], scores)


def main() -> None:
    params = load_params()
    processor = load_processor(params)
    model = build_llava(params, processor.tokenizer, stage1_dir(params)).eval()

    conversations, labels = text_questions(100)
    scores = [s for c in conversations for s in yes_minus_no(language_model_view(model), processor, [c], None)]
    print(f"{'llm reads text':<32} AUC {roc_auc_score(labels, scores):.3f}")

    rows, images_dir = read_pope(params.eval_mm.pope_dir / "coco_pope_random.json"), params.eval_mm.pope_images
    print(f"{'pope after stage 1':<32} AUC {pope_auc(model, processor, rows, images_dir):.3f}")
    for tuning in params.grid.tuning:
        tuned, _ = load_tuned(params, tuning, "image")
        print(f"{'pope after stage 2 ' + tuning + '-image':<32} AUC {pope_auc(tuned, processor, rows, images_dir):.3f}")

if __name__ == "__main__":
    main()
