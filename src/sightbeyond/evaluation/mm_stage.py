"""Stage `eval_mm`: POPE on an image-tuned model, with greedy decoding and the backbone's conversation template."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from sightbeyond.config import Params, Tuning
from sightbeyond.evaluation.pope import pope_metrics
from sightbeyond.io import write_json

RESULTS = Path("results/eval_mm")


def read_pope(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {n}: unparsable JSON ({err.msg})") from None
        if not {"question_id", "image", "text", "label"} <= row.keys() or row["label"] not in ("yes", "no"):
            raise ValueError(f"{path}: line {n}: expected question_id, image, text and a yes/no label, got {row}")
        rows.append(row)
    return rows


@torch.inference_mode()
def answer(model, processor, questions: list[dict], image_dir: Path, *, batch_size: int, max_new_tokens: int,
           do_sample: bool) -> list[str]:
    answers = []
    for i in tqdm(range(0, len(questions), batch_size), desc="generate", unit="batch"):
        batch = questions[i : i + batch_size]
        prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q["text"]}]}],
                                                 add_generation_prompt=True) for q in batch]
        images = [Image.open(image_dir / q["image"]).convert("RGB") for q in batch]
        inputs = processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt",
                           add_special_tokens=False).to(model.device)
        kwargs = {"do_sample": True, "top_k": 50} if do_sample else {"do_sample": False}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        answers += processor.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    return [a.strip() for a in answers]


def run(params: Params, tuning: Tuning) -> None:
    import mlflow

    from sightbeyond.model.extract import load_tuned
    from sightbeyond.tracking.runs import stage_run
    from sightbeyond.training.common import stage2_dir, variant

    cfg = params.eval_mm
    splits = {split: read_pope(cfg.pope_dir / f"coco_pope_{split}.json") for split in cfg.splits}  # all checked up front
    missing = sorted({q["image"] for rows in splits.values() for q in rows if not (cfg.pope_images / q["image"]).is_file()})
    if missing:
        raise FileNotFoundError(f"{cfg.pope_images}: {len(missing)} POPE images missing, e.g. {missing[:3]}")
    torch.manual_seed(42)  # the authors' sampling seed; greedy decoding ignores it
    model, processor = load_tuned(params, tuning, "image")
    name = variant(tuning, "image")
    with stage_run("eval_mm", params, name=f"eval_mm-{params.backbone}-{name}", tags={"tuning": tuning, "modality": "image", "model": name},
                   param_sections=("eval_mm",), inputs=[stage2_dir(params, tuning, "image"), cfg.pope_dir]):
        metrics = {}
        for split, questions in splits.items():
            answers = answer(model, processor, questions, cfg.pope_images, batch_size=cfg.batch_size,
                             max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample)
            metrics |= {f"pope_{split}/{k}": v for k, v in pope_metrics([q["label"] for q in questions], answers).items()}
            mlflow.log_table({"question_id": [q["question_id"] for q in questions], "image": [q["image"] for q in questions],
                              "question": [q["text"] for q in questions], "label": [q["label"] for q in questions],
                              "answer": answers}, artifact_file=f"pope_{split}_predictions.json")
        mlflow.log_metrics(metrics)
        write_json(RESULTS / f"{params.backbone}-{name}.json", metrics)
