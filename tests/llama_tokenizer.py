"""A LLaMA-style SentencePiece tokenizer, trained in milliseconds and saved as a LLaMA hub repo saves it.

Why: LLaMA's tokenizer merges the space before an answer into the answer's first piece ("ASSISTANT: No" ends in "▁No")
and adds a dummy-prefix "▁" after special tokens in legacy mode; a byte-level BPE does neither, so masks checked on one
say little about the other. Only the text form of the repo is needed (no weights): `config.json` is what the backbone
resolver looks for.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.",
    "USER: Is there a star in the image? ASSISTANT: No, there is no star in the image.",
    "### Human: What color is the circle?",
    "### Assistant: The circle is red.",
    "[INST] <<SYS>> <</SYS>> [/INST] There are 3 shapes in the image. ###",
] * 10  # no newlines: as in LLaMA's vocabulary, "\n" is left to the byte piece <0x0A> and never merges


def train_llama_tokenizer(vocab_size: int = 600) -> bytes:
    """A SentencePiece BPE model with the trainer settings of LLaMA's tokenizer.model, on a tiny corpus."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=0.99995,
        max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return model.getvalue()


def save_llama_repo(out: Path, model: bytes, *, legacy: bool) -> Path:
    """tokenizer.model with LLaMA-2's tokenizer_config.json (`legacy` as given) and a LLaMA config.json."""
    from transformers import LlamaConfig

    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": legacy,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 2048,
    }))
    LlamaConfig().save_pretrained(out)
    return out
