"""Stage `extract`: the tuned LLM alone (LoRA merged; vision encoder and projector dropped), as a causal-LM directory."""

from __future__ import annotations

import shutil

from sightbeyond.config import Modality, Params, Tuning
from sightbeyond.io import atomic_dir, check_writable
from sightbeyond.layout import SELECTION, Cell
from sightbeyond.model.llava import language_model_view, load_tuned, tuned_dir
from sightbeyond.tracking.runs import logged_model


def run(params: Params, tuning: Tuning, modality: Modality) -> None:
    cell = Cell.of(params, tuning, modality)
    check_writable(cell.extracted_dir.parent)
    model, processing = load_tuned(params, tuning, modality)
    llm = language_model_view(model) if modality == "image" else model
    tokenizer = processing.tokenizer if modality == "image" else processing
    with atomic_dir(cell.extracted_dir) as tmp:
        llm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (chosen := tuned_dir(params, tuning, modality) / SELECTION).is_file():  # how the checkpoint was chosen
            shutil.copy(chosen, tmp / SELECTION)
    logged_model(params, cell.extracted_dir, model_type="llm", name=f"llm-{cell.key}")
