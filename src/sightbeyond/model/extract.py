"""Stage `extract`: the tuned LLM alone (LoRA merged; vision encoder and projector dropped), as a causal-LM directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from sightbeyond.config import Modality, Params, Tuning
from sightbeyond.io import atomic_dir
from sightbeyond.training.common import BEST, SELECTION, extracted_dir, stage1_dir, stage2_dir


def tuned_dir(params: Params, tuning: Tuning, modality: Modality) -> Path:
    """The stage-2 model the evaluations read: the best step's where stage2.best_metric chose one, else the last."""
    out = stage2_dir(params, tuning, modality)
    return out / BEST if params.stage2.best_metric is not None and (out / BEST).is_dir() else out


def load_tuned(params: Params, tuning: Tuning, modality: Modality):
    """The stage-2 model with LoRA merged, and its processor (image) or tokenizer (text)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    from sightbeyond.model.llava import SightLlava, build_llava, load_llm

    path = tuned_dir(params, tuning, modality)
    if modality == "image":
        processing = AutoProcessor.from_pretrained(path)
        tokenizer = processing.tokenizer
        if tuning == "ft":
            return SightLlava.from_pretrained(path).eval(), processing
        base = build_llava(params, tokenizer, projector_dir=stage1_dir(params))
    else:
        processing = tokenizer = AutoTokenizer.from_pretrained(path)
        if tuning == "ft":
            return AutoModelForCausalLM.from_pretrained(path).eval(), processing
        base = load_llm(params, tokenizer)
    return PeftModel.from_pretrained(base, path).merge_and_unload().eval(), processing


def run(params: Params, tuning: Tuning, modality: Modality) -> None:
    from sightbeyond.model.llava import language_model_view
    from sightbeyond.tracking.runs import logged_model

    model, processing = load_tuned(params, tuning, modality)
    llm = language_model_view(model) if modality == "image" else model
    tokenizer = processing.tokenizer if modality == "image" else processing
    with atomic_dir(extracted_dir(params, tuning, modality)) as tmp:
        llm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (chosen := tuned_dir(params, tuning, modality) / SELECTION).is_file():  # how the checkpoint was chosen
            shutil.copy(chosen, tmp / SELECTION)
    logged_model(params, extracted_dir(params, tuning, modality), model_type="llm",
                 name=f"llm-{params.backbone_key}-{params.data}-{tuning}-{modality}")
