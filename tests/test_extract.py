"""The extracted LLM is the LLaVA's language model: same logits on text, LoRA merged, loadable on its own."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from sightbeyond.model.llava import build_llava, language_model_view, load_tokenizer


def test_extracted_llm_matches_llava_language_model(params_for, tmp_path):
    from peft import PeftModel, get_peft_model

    from sightbeyond.training.stage2 import lora_config

    params = params_for()
    tokenizer = load_tokenizer(params)
    llava = build_llava(params, tokenizer)
    peft = get_peft_model(llava, lora_config(params, "image"))
    assert not any("vision_tower" in n for n, _ in peft.named_modules() if "lora_A" in n)  # LoRA on the LLM only
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a LoRA that changes the outputs, so merging is tested for real
    ids = tokenizer("Is there a red circle in the image?", return_tensors="pt").input_ids
    peft.eval()
    with torch.no_grad():
        expected = peft(input_ids=ids).logits
        merged = peft.merge_and_unload()
        language_model_view(merged).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    extracted = AutoModelForCausalLM.from_pretrained(tmp_path / "llm").eval()
    assert type(extracted).__name__ == "LlamaForCausalLM"
    assert not any("vision" in k or "projector" in k for k in extracted.state_dict())
    with torch.no_grad():
        got = extracted(input_ids=ids).logits
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
