"""`sightbeyond preview`: the full text the model sees and the tokens it is trained on, through the training collator."""

from __future__ import annotations

import json

from datasets import load_from_disk

from sightbeyond.config import Params
from sightbeyond.layout import split_dir
from sightbeyond.model.llava import load_processor, load_tokenizer


def encode(processing, rows: list[dict], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """input_ids and labels exactly as stage 1/2 build them (TRL's collator for images, TRL's tokenisation for text)."""
    if "images" in rows[0]:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        batch = DataCollatorForVisionLanguageModeling(processing, max_length=max_length, assistant_only_loss=True)(rows)
        keep = batch["attention_mask"].bool()
        return ([ids[m].tolist() for ids, m in zip(batch["input_ids"], keep)],
                [lab[m].tolist() for lab, m in zip(batch["labels"], keep)])
    ids, labels = [], []
    for row in rows:
        out = processing.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True, truncation=True, max_length=max_length)
        ids.append(list(out["input_ids"]))
        labels.append([t if m else -100 for t, m in zip(out["input_ids"], out["assistant_masks"])])
    return ids, labels


def run(params: Params, split: str, n: int, as_json: bool) -> None:
    dataset = load_from_disk(str(split_dir(split, params.data)))
    rows = [dataset[i] for i in range(min(n, len(dataset)))]
    template = "plain" if split == "stage1" else None
    processing = load_processor(params, template) if "images" in dataset.column_names else load_tokenizer(params, template)
    tokenizer = getattr(processing, "tokenizer", processing)
    max_length = (params.hparams.stage1 if split == "stage1" else params.hparams.stage2).max_length
    for row, ids, labels in zip(rows, *encode(processing, rows, max_length)):
        record = {"id": row["id"], "prompt": tokenizer.decode(ids, skip_special_tokens=False),
                  "supervised": tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)}
        print(json.dumps(record) if as_json else f"--- {record['id']}\n{record['prompt']}\n>>> supervised:\n{record['supervised']}\n")
