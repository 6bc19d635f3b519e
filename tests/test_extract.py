"""The extracted LLM is the LLaVA's language model: same logits on text, LoRA merged, loadable on its own."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from sightbeyond.layout import Cell
from sightbeyond.model import extract
from sightbeyond.model.llava import build_llava, load_processor, save_projector


def test_extracted_llm_matches_llava_language_model(params_for, mlflow_store, tmp_path, monkeypatch):
    from peft import get_peft_model

    from sightbeyond.training.stage2 import lora_config

    monkeypatch.chdir(tmp_path)
    params = params_for()
    processor = load_processor(params)
    tokenizer = processor.tokenizer
    llava = build_llava(params, tokenizer)
    stage1 = Cell.of(params).stage1_dir
    stage1.mkdir(parents=True)
    save_projector(llava, llava.state_dict(), stage1, tokenizer)  # what stage 1 leaves
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
    cell = Cell.of(params, "lora", "image")
    peft.save_pretrained(cell.stage2_dir)  # what stage 2 leaves: the adapter and the processor
    processor.save_pretrained(cell.stage2_dir)

    extract.run(params, "lora", "image")

    extracted = AutoModelForCausalLM.from_pretrained(cell.extracted_dir).eval()
    assert type(extracted).__name__ == "LlamaForCausalLM"
    assert not any("vision" in k or "projector" in k or "lora" in k for k in extracted.state_dict())
    with torch.no_grad():
        got = extracted(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_tuned_image_model_loads_whole_through_the_auto_class(params_for, tmp_path):
    """Saved as stock `llava`, a linear projector's weights would be dropped on load and a random MLP built instead."""
    import subprocess
    import sys

    from transformers import AutoModelForImageTextToText

    from sightbeyond.model.llava import SightLlava

    params = params_for()
    llava = build_llava(params, load_processor(params).tokenizer)
    llava.save_pretrained(tmp_path / "tuned")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "tuned")
    assert type(loaded) is SightLlava
    assert loaded.state_dict().keys() == llava.state_dict().keys()
    for name, tensor in llava.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    # without sightbeyond's registration, transformers refuses the type instead of guessing it
    stock = subprocess.run([sys.executable, "-c", "import sys; from transformers import AutoModelForImageTextToText; "
                            "AutoModelForImageTextToText.from_pretrained(sys.argv[1])", str(tmp_path / "tuned")],
                           capture_output=True, text=True)
    assert stock.returncode != 0 and "sight_llava" in stock.stderr
