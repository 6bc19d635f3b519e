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


def encode_one(params, template: str, conversation: list[dict], with_image: bool):
    """The tokenizer, input ids and labels of one record, through the collator training uses."""
    row = {"id": "x", "messages": conversation}
    if with_image:
        row["images"] = [Image.new("RGB", (32, 32), "red")]
        processing = load_processor(params, template)
    else:
        processing = load_tokenizer(params, template)
    [ids], [labels] = encode(processing, [row], max_length=512)
    return getattr(processing, "tokenizer", processing), ids, labels


@pytest.mark.parametrize("template", ["v1", "llama_2"])
@pytest.mark.parametrize("with_image", [True, False])
def test_supervised_tokens_are_the_assistant_turns(params_for, template, with_image):
    params = params_for()
    tokenizer, ids, labels = encode_one(params, template, messages(with_image), with_image)
    supervised = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)
    assert re.fullmatch(EXPECTED[template], supervised), supervised
    prompt = tokenizer.decode(ids, skip_special_tokens=False)
    for q, a in TURNS:
        assert q in prompt and a in prompt
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (image_id in ids) == with_image
    assert all(lab == -100 for tok, lab in zip(ids, labels) if tok == image_id)
    assert labels[0] == -100  # BOS


@pytest.mark.parametrize("template", ["v1", "llama_2"])
def test_the_processors_fast_masks_are_llava_processors(params_for, template, tmp_path):
    """SightLlavaProcessor only changes how fast the assistant masks are built: the same batch through TRL's collator
    gives LlavaProcessor's labels exactly (padding, several turns, truncation), and a saved one loads back as itself."""
    from transformers import AutoProcessor, LlavaProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    fast = load_processor(params_for(), template)
    stock = LlavaProcessor(image_processor=fast.image_processor, tokenizer=fast.tokenizer, patch_size=fast.patch_size,
                           vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                           num_additional_image_tokens=1, chat_template=fast.chat_template)
    conversations = [messages(True), messages(True)[:2], messages(True) + messages(True)[2:] * 2]
    def collate(processor, max_length):
        return DataCollatorForVisionLanguageModeling(processor, max_length=max_length, assistant_only_loss=True)(
            [{"messages": c, "images": [Image.new("RGB", (32, 32), "red")]} for c in conversations])

    full = collate(stock, 4096)["input_ids"].shape[1]
    for max_length in (4096, full - 7):  # the longest record cut inside its last answer
        batches = [collate(p, max_length) for p in (fast, stock)]
        assert (batches[0]["labels"] != -100).any()
        assert batches[0]["labels"].tolist() == batches[1]["labels"].tolist()
        assert batches[0]["input_ids"].tolist() == batches[1]["input_ids"].tolist()
    fast.save_pretrained(tmp_path)
    assert type(AutoProcessor.from_pretrained(tmp_path)) is type(fast)


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


# --- LLaMA's SentencePiece tokenizer: the space before an answer merges into its first piece ("ASSISTANT: No" -> "▁No")


@pytest.fixture(scope="session")
def llama_spm() -> bytes:
    from llama_tokenizer import train_llama_tokenizer

    return train_llama_tokenizer()


@pytest.fixture(scope="session", params=[True, False], ids=["legacy", "non-legacy"])
def llama_repo(request, llama_spm, tmp_path_factory):
    """The tokenizer files as LLaMA-1/Vicuna repos ship them (legacy) and as LLaMA-2's tokenizer_config sets them."""
    from llama_tokenizer import save_llama_repo

    return save_llama_repo(tmp_path_factory.mktemp("llama"), llama_spm, legacy=request.param), request.param


def turns(with_image: bool, n: int) -> list[dict]:
    return messages(with_image)[:2 * n]


def covered_text(tokenizer, ids: list[int]) -> str:
    """The text the tokens stand for, with each piece's own "▁" kept (decode would drop the first one)."""
    text = "".join(tokenizer.convert_ids_to_tokens(ids)).replace("▁", " ")
    return re.sub(r"<0x([0-9A-F]{2})>", lambda m: chr(int(m.group(1), 16)), text)


# LLaVA's training text for TURNS, image in the first question (train.py `preprocess*` + conversation.py), BOS included.
RENDERED = {
    "v0": "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.\n\n### Human: <image>\nIs there a star in the image?\n"
          "### Assistant: No, there is no star in the image.\n### Human: What color is the circle?\n"
          "### Assistant: The circle is red.\n### ",
    "v1": "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. USER: <image>\nIs there a star in the image? "
          "ASSISTANT: No, there is no star in the image.</s>USER: What color is the circle? ASSISTANT: The circle is red.</s>",
    "llama_2": "<s>[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
               "content that the user provides, and assist the user with a variety of tasks using natural language.\n"
               "<</SYS>>\n\n<image>\nIs there a star in the image? [/INST] No, there is no star in the image. </s>"
               "<s>[INST] What color is the circle? [/INST] The circle is red. </s>",
    "plain": "<s><image>No, there is no star in the image.\nThe circle is red.\n",
}

# What is supervised, per template and number of rounds, as the text its tokens cover. "{p}" is the "▁" that legacy
# mode puts after a special token (<s>, <image>); elsewhere the space before an answer is inside its first piece.
SUPERVISED = {
    ("v0", 1): "###### Assistant: No, there is no star in the image.\n### ",
    ("v0", 2): "###### Assistant: No, there is no star in the image.\n###### Assistant: The circle is red.\n### ",
    ("v1", 1): " No, there is no star in the image.</s>",
    ("v1", 2): " No, there is no star in the image.</s> The circle is red.</s>",
    ("llama_2", 1): " No, there is no star in the image. </s>",
    ("llama_2", 2): " No, there is no star in the image. </s> The circle is red. </s>",
    ("plain", 1): "{p}No, there is no star in the image.\n",
    ("plain", 2): "{p}No, there is no star in the image.\nThe circle is red.\n",
}


@pytest.mark.parametrize("template", ["v0", "v1", "llama_2", "plain"])
def test_llama_tokenizer_renders_llava_prompts(params_for, llama_repo, template):
    repo, _ = llama_repo
    tokenizer = load_tokenizer(params_for(**{"backbones.tiny.llm": str(repo)}), template)
    assert tokenizer.apply_chat_template(messages(with_image=True), tokenize=False) == RENDERED[template]


@pytest.mark.parametrize("n_turns", [1, 2])
@pytest.mark.parametrize("with_image", [True, False])
@pytest.mark.parametrize("template", ["v0", "v1", "llama_2", "plain"])
def test_llama_tokenizer_supervises_what_llava_does(params_for, llama_repo, template, with_image, n_turns):
    repo, legacy = llama_repo
    params = params_for(**{"backbones.tiny.llm": str(repo)})
    tokenizer, ids, labels = encode_one(params, template, turns(with_image, n_turns), with_image)
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]

    # LLaVA masks instructions by length, len(tokenizer(instruction).input_ids) - 2, which is right only for legacy
    # tokenizers (multi-turn v1 with legacy=False hits its "tokenization mismatch" and drops the sample); we implement
    # what it intends, answer and end token, so both tokenizer modes must supervise the same text.
    assert covered_text(tokenizer, supervised) == SUPERVISED[template, n_turns].format(p=" " if legacy else "")
    if template in ("v1", "llama_2"):
        assert tokenizer.convert_ids_to_tokens(supervised[0]) == "▁No"  # the merged space goes with the answer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert ids[0] == bos and labels[0] == -100
    assert ids.count(bos) == (n_turns if template == "llama_2" else 1)  # llama_2 opens every round with <s>
    assert ids.count(eos) == (n_turns if template in ("v1", "llama_2") else 0)
    assert all(lab == eos for tok, lab in zip(ids, labels) if tok == eos)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (image_id in ids) == with_image
    assert all(lab == -100 for tok, lab in zip(ids, labels) if tok == image_id)
