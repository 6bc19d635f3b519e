"""The loss covers exactly the assistant turns and their end tokens, through the collators stage 1 and 2 train with."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from sightbeyond.model.llava import IMAGE_TOKEN, load_processor, load_tokenizer
from sightbeyond.training.preview import encode

TURNS = [("Is there a star in the image?", "No, there is no star in the image."),
         ("What color is the circle?", "The circle is red.")]


def messages(with_image: bool) -> list[dict]:
    out = []
    for i, (q, a) in enumerate(TURNS):
        if with_image:
            user = ([{"type": "image", "text": None}] if i == 0 else []) + [{"type": "text", "text": q}]
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]
        else:
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


# What LLaVA supervises per round, written out by hand. The space before an answer is supervised only where the
# tokenizer merges it into the answer's first token (LLaMA's "▁No"), so it is optional here.
EXPECTED = {
    "v1": "".join(f" ?{re.escape(a)}</s>" for _, a in TURNS),
    "llama_2": "".join(f" ?{re.escape(a)} </s>" for _, a in TURNS),
}


@pytest.mark.parametrize("template", ["v1", "llama_2"])
@pytest.mark.parametrize("with_image", [True, False])
def test_supervised_tokens_are_the_assistant_turns(params_for, template, with_image):
    params = params_for()
    row = {"id": "x", "messages": messages(with_image)}
    if with_image:
        row["images"] = [Image.new("RGB", (32, 32), "red")]
        processing = load_processor(params, template)
    else:
        processing = load_tokenizer(params, template)
    tokenizer = getattr(processing, "tokenizer", processing)
    [ids], [labels] = encode(processing, [row], max_length=512)
    supervised = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)
    assert re.fullmatch(EXPECTED[template], supervised), supervised
    prompt = tokenizer.decode(ids, skip_special_tokens=False)
    for q, a in TURNS:
        assert q in prompt and a in prompt
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (image_id in ids) == with_image
    assert all(lab == -100 for tok, lab in zip(ids, labels) if tok == image_id)
    assert labels[0] == -100  # BOS


def test_plain_template_supervises_the_caption_only(params_for):
    params = params_for()
    row = {"id": "x", "images": [Image.new("RGB", (32, 32), "blue")], "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a blue square on a dark background ."}]}]}
    processing = load_processor(params, "plain")
    [ids], [labels] = encode(processing, [row], max_length=512)
    tokenizer = processing.tokenizer
    assert tokenizer.decode([t for t in labels if t != -100]) == "a blue square on a dark background .\n"
    n_image = sum(t == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) for t in ids)
    assert n_image == (32 // 16) ** 2  # CLS dropped
