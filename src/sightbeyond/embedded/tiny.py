"""The embedded default's backbone, built locally: a tokenizer, a small LLaMA and a small CLIP, in hub layout.

Both are pretrained briefly on ShapesWorld text and image-caption pairs, so that stage 1 and 2 start from models that
know something, as they would from LLaMA and CLIP. Plain training loops: a few hundred steps, nothing for Trainer to add.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sightbeyond.config import Pretrain, Reading, TinyBackbone
from sightbeyond.io import TrainingFailed
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


def scene_grid(scene: list[sw.Shape], side: int) -> list[tuple[str, ...]]:
    """A scene in words, laid out as the tiny CLIP's `side` x `side` patches, row by row: each of ShapesWorld's four
    cells covers a block of (side / 2)^2 patches, each holding its shape's colour and kind together, or `dark` where
    nothing is drawn. A linear projector maps a patch to a sum of directions (colour and kind at once, not one word
    in one patch and another in the next), so the LLM practises on such sums: a position is the sum of its words'
    embeddings."""
    half, slots = side // 2, [[("dark",)] * side for _ in range(side)]
    for shape in scene:
        top, left = (shape.cell // 2) * half, (shape.cell % 2) * half
        for row in range(top, top + half):
            slots[row][left:left + half] = [(shape.color, shape.kind)] * half
    return [slot for row in slots for slot in row]


@dataclass(frozen=True)
class Practice:
    """Text, a scene grid where an image goes, then the text the LLM is scored on (the grid itself is random: its loss
    would be noise)."""

    before: str
    grid: list[tuple[str, ...]]
    after: str

    def text(self) -> str:  # for the tokenizer's training
        return self.before + " ".join(word for slot in self.grid for word in slot) + self.after


GRID = "<grid>"  # where a chat template puts the grid, before it is cut out


def reading_practice(cfg: Reading, side: int, template: str, seed: int) -> list[Practice]:
    """Practice for the tiny LLM at reading its context, which a hub LLM does out of the box and a model pretrained
    from scratch for a minute does not, on `cfg.scenes` fresh scenes. A share `cfg.captions` is the grid then its
    caption (stage 1's task, in stage 1's layout), `cfg.lookups` the grid then every shape and `yes` or `no` (a lookup
    one step long: the answer is predicted at the shape's name, which a 2-layer model learns in a few hundred
    steps), the rest presence questions about every shape in `template`, stage 2's, the grid where the image goes:
    there the answer is predicted several tokens after the shape's name, which is learned once the lookup exists, and
    reliably only in one template (measured: in v0, v1 and llama_2 mixed, two seeds in three never learned it)."""
    rng = random.Random(seed)
    bootstrap = train_tokenizer([sw.caption(sw.sample_scene(rng, 3)) for _ in range(50)], vocab_size=300)
    bootstrap.chat_template = chat_template(template)
    out = []
    for _ in range(cfg.scenes):
        scene = sw.sample_scene(rng, rng.randint(1, 3))
        grid, shown, kinds, draw = scene_grid(scene, side), {s.kind: s for s in scene}, list(sw.SHAPES), rng.random()
        rng.shuffle(kinds)
        if draw < cfg.captions:
            out.append(Practice("", grid, sw.caption(scene) + "\n"))
        elif draw < cfg.captions + cfg.lookups:
            out.append(Practice("", grid, "\n" + " ".join(f"{k} {'yes' if k in shown else 'no'}" for k in kinds) + "\n"))
        else:
            messages = []
            for kind in kinds:
                answer = (f"Yes, there is {sw.article(shown[kind].name)} {shown[kind].name} in the image." if kind in shown
                          else f"No, there is no {kind} in the image.")
                question = f"Is there {sw.article(kind)} {kind} in the image?"
                messages += [{"role": "user", "content": question if messages else f"{GRID}\n{question}"},
                             {"role": "assistant", "content": answer}]
            chat = bootstrap.apply_chat_template(messages, tokenize=False).replace("<s>", "").replace("</s>", "")
            before, after = chat.split(GRID)
            out.append(Practice(before, grid, after))
    return out


def encode(tokenizer, doc: Practice) -> tuple[list[int], list[int], list[int]]:
    """(token ids, a second token id per position or -1, labels): a grid position holds its first word's id and its
    second word's; only the text after the grid is scored."""
    before = tokenizer(doc.before).input_ids
    words = [[single_token(tokenizer, word) for word in slot] for slot in doc.grid]
    after = tokenizer(doc.after, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = before + [slot[0] for slot in words] + after
    second = [-1] * len(before) + [slot[1] if len(slot) > 1 else -1 for slot in words] + [-1] * len(after)
    return ids, second, [-100] * (len(before) + len(words)) + after


def single_token(tokenizer, word: str) -> int:
    ids = tokenizer(" " + word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"the grid word {word!r} is {len(ids)} tokens; the tokenizer must learn it as one")
    return ids[0]


def embed(model, ids: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The input embeddings of `ids`, plus those of `second` where it is not -1 (a grid position's two words)."""
    table = model.get_input_embeddings()
    return table(ids) + table(second.clamp(min=0)) * (second >= 0).unsqueeze(-1).to(table.weight.dtype)


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


def pretrain_llm(cfg: TinyBackbone, tokenizer, texts: list[str], practice: list[Practice], seed: int):
    """Next-token prediction on `texts` and on the practice, rows packed from whole documents; `seed` draws the
    initial weights and the batches."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), **cfg.llm.model_dump(), num_key_value_heads=cfg.llm.num_attention_heads,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    docs = [(ids := tokenizer(t).input_ids + [tokenizer.eos_token_id], [-1] * len(ids), ids) for t in texts]
    docs += [encode(tokenizer, doc) for doc in practice]
    p, rng = cfg.llm_pretrain, random.Random(seed)

    def batch_loss():
        rows = []
        for _ in range(p.batch_size):  # documents drawn until the row is full, the last one cut at seq_len
            row = ([], [], [])
            while len(row[0]) < p.seq_len:
                row = tuple(a + b for a, b in zip(row, docs[rng.randrange(len(docs))]))
            rows.append([part[:p.seq_len] for part in row])
        ids, second, labels = (torch.tensor(part) for part in zip(*rows))
        return model(inputs_embeds=embed(model, ids, second), labels=labels).loss

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


@torch.inference_mode()
def presence_auc(model, tokenizer, template: str, side: int, seed: int, questions: int = 200) -> float:
    """How well the LLM answers a presence question about a scene in words where the image goes (the skill POPE
    needs of it): the AUC of logit(Yes) - logit(No) at the answer's first token, on fresh scenes."""
    tokenizer = copy.copy(tokenizer)
    tokenizer.chat_template = chat_template(template)
    rng, scores, present = random.Random(seed), [], []
    for _ in range(questions):
        scene, kind = sw.sample_scene(rng, rng.randint(1, 3)), rng.choice(list(sw.SHAPES))
        question = [{"role": "user", "content": f"{GRID}\nIs there {sw.article(kind)} {kind} in the image?"}]
        prompt = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
        before, after = prompt.replace("<s>", "").replace("</s>", "").split(GRID)
        yes, no = (encode(tokenizer, Practice(before, scene_grid(scene, side), after + answer))[:2] for answer in (" Yes", " No"))
        first = next(i for i, (a, b) in enumerate(zip(yes[0], no[0])) if a != b)
        logits = model(inputs_embeds=embed(model, torch.tensor([yes[0][:first]]), torch.tensor([yes[1][:first]]))).logits
        scores.append((logits[0, -1, yes[0][first]] - logits[0, -1, no[0][first]]).item())
        present.append(any(s.kind == kind for s in scene))
    return float(roc_auc_score(present, scores))


def pretrain_reading_llm(cfg: TinyBackbone, tokenizer, texts, practice, template: str, side: int):
    """Pretrain, then check the skill the image cells depend on; a tiny model trained from scratch for a minute learns
    it or not by chance (measured: AUC 1.00 on six seeds in seven, about 0.6 on the seventh, and which seeds fail
    changes with the thread count), so a failed draw is retrained from the next seed, in the open."""
    for attempt in range(cfg.reading.attempts):
        seed = cfg.seed + attempt
        model = pretrain_llm(cfg, tokenizer, texts, practice, seed)
        auc = presence_auc(model, tokenizer, template, side, seed=cfg.seed + 1000)
        print(f"tiny LLaMA (seed {seed}) answers presence questions about scenes in words at AUC {auc:.3f} "
              f"(needs {cfg.reading.min_auc})", flush=True)
        if cfg.reading.min_auc is None or auc >= cfg.reading.min_auc:
            return model, {"seed": seed, "presence_auc": round(auc, 4), "attempts": attempt + 1}
    raise TrainingFailed(f"tiny_backbone: the tiny LLaMA did not learn to read its context in {cfg.reading.attempts} "
                         f"attempts (presence AUC {auc:.3f} < tiny_backbone.reading.min_auc {cfg.reading.min_auc}, "
                         f"seeds {cfg.seed}-{seed}); raise tiny_backbone.reading.attempts or llm_pretrain.steps")


def build(cfg: TinyBackbone, synth_dir: Path, out: Path, image_size: int, template: str, *, llm: bool = True) -> None:
    """Write `out/llm` (tokenizer + LLaMA) and `out/clip` (CLIP + image processor), as hub repos are laid out; with
    `llm=False` only the CLIP: the embedded vision encoder of a backbone whose LLM comes from elsewhere."""
    texts, pairs = corpus(synth_dir)
    side = image_size // cfg.clip.patch_size
    practice = reading_practice(cfg.reading, side, template, seed=cfg.seed + 1)
    tokenizer = train_tokenizer(texts + [doc.text() for doc in practice], cfg.vocab_size)
    if llm:
        model, reading = pretrain_reading_llm(cfg, tokenizer, texts, practice, template, side)
        model.save_pretrained(out / "llm")
        tokenizer.save_pretrained(out / "llm")
        (out / "llm/reading.json").write_text(json.dumps(reading, indent=2) + "\n")
    torch.manual_seed(cfg.seed)  # the CLIP is the same whether and however long the LLM trained before it
    clip, processor = pretrain_clip(cfg, tokenizer, pairs, image_size)
    clip.save_pretrained(out / "clip")
    processor.save_pretrained(out / "clip")
