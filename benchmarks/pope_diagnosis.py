"""Where the image signal is lost on the way to POPE's answer: in CLIP, in the projector, or in the LLM?

Linear probes (logistic regression, one per shape, trained on the stage-1 images whose captions name their shapes,
scored on POPE-random's held-out questions, balanced present/absent) on
- `clip features`: the vision tower's patch features at `model.vision_feature_layer`, what the projector reads;
- `projector outputs`: the stage-1 projector's image tokens, what the LLM reads (stage 2's for each variant);
- `answer position, layer L`: the LLM's hidden state where its answer starts (image, then the POPE-style question),
  one probe per layer for "the asked shape is there", trained on questions about the stage-1 images: whether the
  LLM carries the image's answer to the position that must say it (if so and its answer does not follow, only the
  readout is missing);
and the LLM's own answer, scored by logit(yes) - logit(no) at the answer's first token, as the AUC of present against
absent objects (0.5 is chance; unlike accuracy it does not depend on where a yes-biased model puts its threshold):
- `llm reads text`: the base LLM, with a ShapesWorld caption in words where the image goes, then a POPE question;
- `pope after stage 1`: the base LLM with the stage-1 projector;
- `pope after stage 2 <variant>`: each image-tuned stage-2 model of the grid.

Run after `dvc repro` (or `dvc exp run -S backbone=smollm2`), from the repo root:
    .venv/bin/python benchmarks/pope_diagnosis.py [-S backbone=smollm2]
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from sightbeyond.cli import _overrides
from sightbeyond.config import load_params
from sightbeyond.embedded import shapesworld as sw
from sightbeyond.tasks.pope import read_pope
from sightbeyond.model.llava import build_llava, language_model_view, load_processor, load_tuned
from sightbeyond.layout import Cell


def first_answer_token(processor, conversation: list[dict], answer: str) -> int:
    """The token an assistant answer starts with in this template (" Yes" after v1's "ASSISTANT:", "Yes" in ChatML)."""
    tokenizer = processor.tokenizer
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    full = processor.apply_chat_template(conversation + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}])
    a, b = (tokenizer(t, add_special_tokens=False).input_ids for t in (prompt, full))
    return b[next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if a != b[:len(a)] else len(a)]


@torch.inference_mode()
def yes_minus_no(model, processor, conversations: list[list[dict]], images: list[Image.Image] | None) -> list[float]:
    tokenizer = processor.tokenizer
    yes, no = (first_answer_token(processor, conversations[0], w) for w in ("Yes, there is", "No, there is no"))
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


@torch.inference_mode()
def image_features(model, processor, paths: list[Path], batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per image, flattened: the CLIP patch features the projector reads, and the projector's image tokens."""
    clip, projected = [], []
    for i in range(0, len(paths), batch):
        pixels = processor.image_processor([Image.open(p).convert("RGB") for p in paths[i:i + batch]],
                                           return_tensors="pt").pixel_values
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        patches = hidden[model.config.vision_feature_layer][:, 1:]  # CLS dropped, as the "default" selection does
        clip.append(patches.flatten(1))
        projected.append(model.model.multi_modal_projector(patches).flatten(1))
    return torch.cat(clip).numpy(), torch.cat(projected).numpy()


@torch.inference_mode()
def answer_states(model, processor, asked: list[tuple[Path, str]], batch: int = 50) -> np.ndarray:
    """Per (image, shape) question, the hidden state of every layer at the last prompt token: (questions, layers, hidden)."""
    states = []
    for i in range(0, len(asked), batch):
        chunk = asked[i:i + batch]
        prompts = [processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": f"Is there {sw.article(kind)} {kind} in the image?"}]}],
            add_generation_prompt=True) for _, kind in chunk]
        inputs = processor(text=prompts, images=[Image.open(path).convert("RGB") for path, _ in chunk], padding=True,
                           padding_side="left", return_tensors="pt", add_special_tokens=False)
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        states.append(torch.stack([h[:, -1] for h in hidden], 1).float())
    return torch.cat(states).numpy()


def answer_position_aucs(model, processor, pairs, present, rows, images_dir) -> dict[int, float]:
    """Per layer, the AUC on POPE's questions of a probe trained on two questions per stage-1 image (a shape there
    and one that is not)."""
    rng, asked, labels = random.Random(0), [], []
    for (path, _), there in zip(pairs, present):
        if there and len(there) < len(sw.SHAPES):
            for kind, label in ((rng.choice(sorted(there)), True), (rng.choice(sorted(set(sw.SHAPES) - there)), False)):
                asked.append((path, kind))
                labels.append(label)
    train = answer_states(model, processor, asked)
    pope = [(images_dir / r["image"], re.search(r"Is there an? (\w+)", r["text"])[1]) for r in rows]
    test, truth = answer_states(model, processor, pope), [r["label"] == "yes" for r in rows]
    aucs = {}
    for layer in range(0, train.shape[1], max(1, train.shape[1] // 6)):
        mean, scale = train[:, layer].mean(0), train[:, layer].std(0) + 1e-6
        probe = LogisticRegression(max_iter=2000, C=0.1).fit((train[:, layer] - mean) / scale, labels)
        aucs[layer] = roc_auc_score(truth, probe.decision_function((test[:, layer] - mean) / scale))
    return aucs


def probe_accuracy(train: np.ndarray, present: list[set[str]], test: np.ndarray, questions: list[tuple[int, str, bool]]) -> float:
    """One logistic regression per shape on the training images; accuracy on the (image, shape, present) questions."""
    mean, scale = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / scale, (test - mean) / scale
    probes = {kind: LogisticRegression(max_iter=2000, C=0.1).fit(train, [kind in p for p in present]) for kind in sw.SHAPES}
    return float(np.mean([probes[kind].predict(test[i:i + 1])[0] == there for i, kind, there in questions]))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override params.yaml")
    params = load_params(overrides=_overrides(cli.parse_args().set))
    torch.manual_seed(0)
    processor = load_processor(params)
    model = build_llava(params, processor.tokenizer, Cell.of(params).stage1_dir).eval()

    pairs = read_stage1_pairs(params)
    rows, images_dir = read_pope(params.eval_mm.pope_dir / "coco_pope_random.json"), params.eval_mm.pope_images
    pope_images = sorted({r["image"] for r in rows})
    questions = [(pope_images.index(r["image"]), re.search(r"Is there an? (\w+)", r["text"])[1], r["label"] == "yes")
                 for r in rows]
    print(f"backbone {params.backbone}; POPE-random: {len(rows)} questions on {len(pope_images)} images, "
          f"{np.mean([q[2] for q in questions]):.2f} present; probes trained on {len(pairs)} stage-1 images")
    train = image_features(model, processor, [p for p, _ in pairs])
    test = image_features(model, processor, [images_dir / i for i in pope_images])
    present = [{k for k in sw.SHAPES if re.search(rf"\b{k}\b", caption)} for _, caption in pairs]
    for name, i in (("clip features", 0), ("projector outputs (stage 1)", 1)):
        print(f"{'probe: ' + name:<40} accuracy {probe_accuracy(train[i], present, test[i], questions):.3f}")

    conversations, labels = text_questions(100)
    scores = [s for c in conversations for s in yes_minus_no(language_model_view(model), processor, [c], None)]
    print(f"{'llm reads text':<40} AUC {roc_auc_score(labels, scores):.3f}")
    print(f"{'pope after stage 1':<40} AUC {pope_auc(model, processor, rows, images_dir):.3f}")
    for layer, auc in answer_position_aucs(model, processor, pairs, present, rows, images_dir).items():
        print(f"{f'probe: answer position, layer {layer} (stage 1)':<40} AUC {auc:.3f}")
    for tuning in params.grid.tuning:
        if not (path := Cell.of(params, tuning, "image").stage2_dir).is_dir():
            print(f"pope after stage 2 {tuning}-image: no model at {path}")
            continue
        tuned, _ = load_tuned(params, tuning, "image")
        projected = image_features(tuned, processor, [p for p, _ in pairs]), image_features(tuned, processor, [images_dir / i for i in pope_images])
        print(f"{'probe: projector outputs (' + tuning + '-image)':<40} accuracy "
              f"{probe_accuracy(projected[0][1], present, projected[1][1], questions):.3f}")
        print(f"{'pope after stage 2 ' + tuning + '-image':<40} AUC {pope_auc(tuned, processor, rows, images_dir):.3f}")
        for layer, auc in answer_position_aucs(tuned, processor, pairs, present, rows, images_dir).items():
            print(f"{f'probe: answer position, layer {layer} ({tuning}-image)':<40} AUC {auc:.3f}")


def read_stage1_pairs(params) -> list[tuple[Path, str]]:
    import json

    chat = json.loads(params.prepare.stage1_file.read_text())
    return [(params.prepare.stage1_images / r["image"], r["conversations"][1]["value"]) for r in chat]


if __name__ == "__main__":
    main()
