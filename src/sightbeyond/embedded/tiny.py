"""The embedded default's backbone, built locally: a tokenizer, a small LLaMA and a small CLIP, in hub layout.

Both are pretrained briefly on ShapesWorld text and image-caption pairs, so that stage 1 and 2 start from models that
know something, as they would from LLaMA and CLIP. Plain training loops: a few hundred steps, nothing for Trainer to add.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sightbeyond.config import Pretrain, TinyBackbone
from sightbeyond.embedded import shapesworld as sw
from sightbeyond.data.llava_format import chat_template

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]  # eos != 2: CLIP's text tower reads id 2 as "legacy argmax"


def corpus(synth_dir: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """Texts for the LLM (captions, caption requests in chat form, instruction turns) and image-caption pairs for CLIP."""
    chat = json.loads((synth_dir / "cc3m/chat.json").read_text())
    pairs = [(synth_dir / "cc3m/images" / r["image"], r["conversations"][1]["value"]) for r in chat]
    texts = [caption for _, caption in pairs] + chat_texts(chat, seed=0)
    for f in sorted((synth_dir / "instruct").glob("*.json")):
        if f.name.startswith("llava_instruct"):
            continue
        for r in json.loads(f.read_text()):
            texts.append(" ".join(t["value"].replace("<image>", "").strip() for t in r["conversations"]))
    return texts, pairs


def grounded_chats(n: int, seed: int) -> list[str]:
    """`n` fresh scenes, each described in words where the image goes, then asked about.

    Opt-in practice for the tiny LLM at reading its context, which a hub LLM does out of the box and ours cannot,
    so that stage 1 has something to map an image into (README, "What the tiny backbone cannot show"). Three in four
    are yes/no chats in the stage-2 templates (two present and two absent shapes), one in four LLaVA's `plain`
    stage-1 layout: the description, then the same caption.
    """
    if n == 0:
        return []
    rng = random.Random(seed)
    bootstrap = train_tokenizer([sw.caption(sw.sample_scene(rng, 3)) for _ in range(50)], vocab_size=300)
    out = []
    for i in range(n):
        scene = sw.sample_scene(rng, rng.randint(1, 3))
        described = sw.caption(scene)
        if i % 4 == 3:
            out.append(f"{described}\n{described}\n")
            continue
        present = [s.kind for s in scene]
        absent = [k for k in sw.SHAPES if k not in present]
        asked = [(k, True) for k in rng.sample(present, min(2, len(present)))] + [(k, False) for k in rng.sample(absent, 2)]
        rng.shuffle(asked)
        messages = []
        for kind, there in asked:
            a = sw.article(kind)
            answer = f"Yes, there is {a} {kind} in the image." if there else f"No, there is no {kind} in the image."
            question = f"Is there {a} {kind} in the image?"
            messages += [{"role": "user", "content": question if messages else f"{described}\n{question}"},
                         {"role": "assistant", "content": answer}]
        bootstrap.chat_template = chat_template(rng.choice(("v0", "v1", "llama_2")))
        out.append(bootstrap.apply_chat_template(messages, tokenize=False).replace("<s>", "").replace("</s>", ""))
    return out


def chat_texts(chat: list[dict], seed: int) -> list[str]:
    """The stage-1 caption requests rendered, text only, in the conversation templates (v0, v1, llama_2).

    A hub LLM's tokenizer and weights know the templates' English (system prompts, USER/ASSISTANT); ours must learn it
    here, or a prompt becomes hundreds of single-character tokens, far past the positions the tiny LLM was trained on.
    """
    bootstrap = train_tokenizer([r["conversations"][1]["value"] for r in chat[:50]], vocab_size=300)
    rng, names = random.Random(seed), ("v0", "v1", "llama_2")
    out = []
    for r in chat:
        q, a = (t["value"].replace("<image>", "").strip() for t in r["conversations"][:2])
        bootstrap.chat_template = chat_template(rng.choice(names))
        out.append(bootstrap.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                                 tokenize=False).replace("<s>", "").replace("</s>", ""))
    return out


def train_tokenizer(texts: list[str], vocab_size: int):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"], model_max_length=2048)


def train(model, p: Pretrain, batch_loss, desc: str):
    """AdamW with a one-cycle schedule for `p.steps` steps; `batch_loss()` returns the loss of a fresh batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=p.steps, pct_start=0.05)
    model.train()
    for _ in (bar := tqdm(range(p.steps), desc=desc)):
        loss = batch_loss()
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def pretrain_llm(cfg: TinyBackbone, tokenizer, texts: list[str]):
    config = LlamaConfig(vocab_size=len(tokenizer), **cfg.llm.model_dump(), num_key_value_heads=cfg.llm.num_attention_heads,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    rng = random.Random(cfg.seed)
    stream: list[int] = []
    for text in rng.sample(texts, len(texts)):
        stream += tokenizer(text).input_ids + [tokenizer.eos_token_id]
    stream_t = torch.tensor(stream)
    p = cfg.llm_pretrain

    def batch_loss():
        starts = torch.randint(0, len(stream_t) - p.seq_len - 1, (p.batch_size,))
        batch = torch.stack([stream_t[s : s + p.seq_len] for s in starts.tolist()])
        return model(input_ids=batch, labels=batch).loss

    return train(model, p, batch_loss, "pretrain tiny LLaMA")


def pretrain_clip(cfg: TinyBackbone, tokenizer, pairs: list[tuple[Path, str]], image_size: int):
    c = cfg.clip
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=c.hidden_size, num_hidden_layers=2,
                         num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                         max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=image_size, patch_size=c.patch_size, hidden_size=c.hidden_size,
                           num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                           intermediate_size=c.intermediate_size),
        projection_dim=c.projection_dim,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    model = CLIPModel(config)
    pixels = processor([Image.open(p).convert("RGB") for p, _ in pairs], return_tensors="pt").pixel_values
    texts = tokenizer([t + tokenizer.eos_token for _, t in pairs], padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
    p = cfg.clip_pretrain
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch_loss():
        idx = torch.randperm(len(pairs), generator=gen)[: p.batch_size]
        return model(input_ids=texts.input_ids[idx], attention_mask=texts.attention_mask[idx],
                     pixel_values=pixels[idx], return_loss=True).loss

    return train(model, p, batch_loss, "pretrain tiny CLIP"), processor


def build(cfg: TinyBackbone, synth_dir: Path, out: Path, image_size: int, *, llm: bool = True) -> None:
    """Write `out/llm` (tokenizer + LLaMA) and `out/clip` (CLIP + image processor), as hub repos are laid out; with
    `llm=False` only the CLIP: the embedded vision encoder of a backbone whose LLM comes from elsewhere."""
    texts, pairs = corpus(synth_dir)
    texts += grounded_chats(cfg.grounded_scenes, seed=cfg.seed + 1)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    if llm:
        torch.manual_seed(cfg.seed)
        pretrain_llm(cfg, tokenizer, texts).save_pretrained(out / "llm")
        tokenizer.save_pretrained(out / "llm")
    torch.manual_seed(cfg.seed)  # the CLIP is the same whether and however long the LLM trained before it
    clip, processor = pretrain_clip(cfg, tokenizer, pairs, image_size)
    clip.save_pretrained(out / "clip")
    processor.save_pretrained(out / "clip")
