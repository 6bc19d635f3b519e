"""ShapesWorld: seeded images of coloured shapes, written in the layouts of the real datasets.

- stage 1 pairs as LLaVA-CC3M-Pretrain-595K: `cc3m/chat.json` + `cc3m/images/`
- stage 2 instructions as LLaVA-Instruct-150K: `instruct/{conversation,detail,complex_reasoning}_<n>.json` and the
  mixed `instruct/llava_instruct_<n>.json`, images in `coco/train2017/`
- POPE on held-out images as the official release: `pope/coco_pope_<split>.json` (JSON lines), images in `coco/val2014/`
- TruthfulQA / ETHICS fixtures in their official layouts under `nlp/`

The importers that read the real files read these unchanged.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from tqdm import tqdm

from sightbeyond.config import Synth
from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
from sightbeyond.io import atomic_dir
from sightbeyond.layout import SYNTH
from sightbeyond.tasks.mme import COGNITION, PERCEPTION

SHAPES = ("circle", "ring", "hexagon", "square", "diamond", "cross", "triangle", "star")
# Shapes of a family co-occur more often, and some shapes are more frequent: this gives POPE's popular and
# adversarial negative sampling something to work with, as COCO's object statistics do.
FAMILY = {"circle": 0, "ring": 0, "hexagon": 0, "square": 1, "diamond": 1, "cross": 1, "triangle": 2, "star": 2}
FREQUENCY = {"circle": 6, "square": 5, "triangle": 4, "star": 3, "ring": 2, "hexagon": 2, "diamond": 2, "cross": 1}
CORNERS = {"circle": 0, "ring": 0, "hexagon": 6, "square": 4, "diamond": 4, "cross": 12, "triangle": 3, "star": 10}
COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 200), "white": (240, 240, 240),
}
CELLS = ("top left", "top right", "bottom left", "bottom right")

CAPTION_PROMPTS = (
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.", "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.", "Share a concise interpretation of the image provided.",
)
DETAIL_PROMPTS = (
    "Describe the following image in detail.", "Can you elaborate on the elements of the picture provided?",
    "What do you see happening in this image?", "Explain the visual content of the image in great detail.",
)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cell: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def sample_scene(rng: random.Random, n_shapes: int) -> list[Shape]:
    kinds: list[str] = []
    while len(kinds) < n_shapes:
        pool = [k for k in SHAPES if k not in kinds]
        if kinds and rng.random() < 0.6:
            same_family = [k for k in pool if FAMILY[k] == FAMILY[kinds[-1]]]
            pool = same_family or pool
        kinds.append(rng.choices(pool, weights=[FREQUENCY[k] for k in pool])[0])
    cells = rng.sample(range(len(CELLS)), n_shapes)
    colors = rng.sample(sorted(COLORS), n_shapes)
    return [Shape(k, c, cell) for k, c, cell in zip(kinds, colors, cells)]


def draw(scene: list[Shape], size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(10, 50) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(img)
    half = size // 2
    for shape in scene:
        r = rng.uniform(0.3, 0.42) * half
        cx = (shape.cell % 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
        cy = (shape.cell // 2) * half + half / 2 + rng.uniform(-0.08, 0.08) * half
        fill = COLORS[shape.color]
        box = (cx - r, cy - r, cx + r, cy + r)
        match shape.kind:
            case "circle":
                pen.ellipse(box, fill=fill)
            case "ring":
                pen.ellipse(box, outline=fill, width=max(2, int(r / 3)))
            case "square":
                pen.rectangle(box, fill=fill)
            case "diamond":
                pen.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
            case "triangle":
                pen.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
            case "hexagon":
                pen.regular_polygon((cx, cy, r), 6, fill=fill)
            case "star":
                points = [(cx + (r if i % 2 == 0 else r / 2.4) * math.sin(i * math.pi / 5),
                           cy - (r if i % 2 == 0 else r / 2.4) * math.cos(i * math.pi / 5)) for i in range(10)]
                pen.polygon(points, fill=fill)
            case "cross":
                w = r / 3
                pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
                pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    return img


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _listing(scene: list[Shape]) -> str:
    names = [f"{article(s.name)} {s.name}" for s in scene]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def caption(scene: list[Shape]) -> str:
    return f"{_listing(scene)} on a dark background ."


def conversation(scene: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    """Short multi-turn Q&A opening with two yes/no questions about objects, as in LLaVA's conversations, each about a
    shape that is there or one that is not, drawn independently: only the image tells an answer (one present and one
    absent, in either order, let the second answer be read off the first: SmolLM2 learnt that, not the image)."""
    present = {s.kind: s for s in scene}
    absent = [k for k in SHAPES if k not in present]
    turns = []
    for s, k in zip(rng.sample(scene, 2) if len(scene) > 1 else [scene[0]] * 2, rng.sample(absent, 2)):
        turns.append((f"Is there {article(s.kind)} {s.kind} in the image?", f"Yes, there is {article(s.name)} {s.name} in the image.")
                     if rng.random() < 0.5 else (f"Is there {article(k)} {k} in the image?", f"No, there is no {k} in the image."))
    if turns[0][0] == turns[1][0]:
        turns.pop()  # a one-shape scene asked about its shape twice: once is enough
    asks = [
        lambda s: (f"What color is the {s.kind}?", f"The {s.kind} is {s.color}."),
        lambda s: (f"Where is the {s.kind} located?", f"The {s.name} is in the {CELLS[s.cell]} of the image."),
        lambda s: (f"What shape is {s.color}?", f"The {s.color} shape is {article(s.kind)} {s.kind}."),
    ]
    for ask in rng.sample(asks, rng.randint(1, 2)):
        turns.append(ask(rng.choice(scene)))
    if rng.random() < 0.5:
        n = len(scene)
        turns.append(("How many shapes are in the image?", f"There {'is one shape' if n == 1 else f'are {n} shapes'} in the image."))
    return turns


def detail(scene: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    n = len(scene)
    parts = [f"The image shows {'one shape' if n == 1 else f'{n} shapes'} on a dark background."]
    for s in sorted(scene, key=lambda s: s.cell):
        parts.append(f"In the {CELLS[s.cell]} there is {article(s.name)} {s.name}.")
    empty = [CELLS[i] for i in range(len(CELLS)) if i not in {s.cell for s in scene}]
    if empty:
        parts.append(f"The {' and the '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty.")
    return [(rng.choice(DETAIL_PROMPTS), " ".join(parts))]


def complex_reasoning(scene: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    if len(scene) > 1 and rng.random() < 0.5:
        gone = rng.choice(scene)
        rest = [s for s in scene if s is not gone]
        return [(f"If the {gone.name} were removed, what would remain in the image?",
                 f"Removing the {gone.name} would leave {_listing(rest)}, so {len(rest)} "
                 f"shape{'s' if len(rest) > 1 else ''} would remain.")]
    total = sum(CORNERS[s.kind] for s in scene)
    reasons = [f"the {s.name} has {CORNERS[s.kind] or 'no'} corner{'' if CORNERS[s.kind] == 1 else 's'}" for s in scene]
    return [("How many corners do the shapes in the image have altogether?",
             f"Counting them one by one, {', '.join(reasons)}, so together they have {total} corners.")]


INSTRUCTION_KINDS = {"conversation": conversation, "detail": detail, "complex_reasoning": complex_reasoning}


def llava_record(record_id: str, image: str, turns: list[tuple[str, str]], rng: random.Random) -> dict:
    first_q = turns[0][0]
    # LLaVA-Instruct puts <image> before or after the first question, on its own line.
    first_q = f"<image>\n{first_q}" if rng.random() < 0.5 else f"{first_q}\n<image>"
    convs = []
    for i, (q, a) in enumerate(turns):
        convs += [{"from": "human", "value": first_q if i == 0 else q}, {"from": "gpt", "value": a}]
    return {"id": record_id, "image": image, "conversations": convs}


def pope_questions(scenes: dict[str, list[Shape]], rng: random.Random) -> dict[str, list[dict]]:
    """POPE's three negative samplings: uniform, most frequent overall, most co-occurring with what is present."""
    frequency = {k: sum(k in {s.kind for s in sc} for sc in scenes.values()) for k in SHAPES}
    cooccur = Counter((a.kind, b.kind) for sc in scenes.values() for a in sc for b in sc if a.kind != b.kind)
    splits: dict[str, list[dict]] = {"random": [], "popular": [], "adversarial": []}
    for image, scene in scenes.items():
        present = [s.kind for s in scene]
        absent = [k for k in SHAPES if k not in present]
        negatives = {
            "random": rng.sample(absent, 3),
            "popular": sorted(absent, key=lambda k: -frequency[k])[:3],
            "adversarial": sorted(absent, key=lambda k: -sum(cooccur[p, k] for p in present))[:3],
        }
        for split, negs in negatives.items():
            rows = splits[split]
            for kind, label in [(k, "yes") for k in present[:3]] + [(k, "no") for k in negs]:
                rows.append({"question_id": len(rows) + 1, "image": image,
                             "text": f"Is there {article(kind)} {kind} in the image?", "label": label})
    return splits


def run(params) -> None:
    generate(params.synth, SYNTH)


def generate(cfg: Synth, out: Path) -> None:
    """Write the whole ShapesWorld release to `out` (atomically)."""
    rng = random.Random(cfg.seed)
    with atomic_dir(out) as tmp:
        # stage 1: LLaVA-CC3M-Pretrain-595K
        (tmp / "cc3m/images").mkdir(parents=True)
        chat = []
        for i in tqdm(range(cfg.stage1_pairs), desc="synth stage-1 pairs"):
            scene = sample_scene(rng, rng.randint(1, cfg.max_shapes))
            name = f"GCC_train_{i:09d}.jpg"
            draw(scene, cfg.image_size, rng).save(tmp / "cc3m/images" / name, quality=95)
            chat.append({"id": name.removesuffix(".jpg"), "image": name, "conversations": [
                {"from": "human", "value": f"{rng.choice(CAPTION_PROMPTS)}\n<image>"},
                {"from": "gpt", "value": caption(scene)}]})
        (tmp / "cc3m/chat.json").write_text(json.dumps(chat))

        # stage 2: LLaVA-Instruct-150K, images as COCO train2017
        (tmp / "coco/train2017").mkdir(parents=True)
        (tmp / "instruct").mkdir()
        mixed, image_id = [], 0
        for kind, make in INSTRUCTION_KINDS.items():
            records = []
            for _ in tqdm(range(getattr(cfg, kind)), desc=f"synth {kind}"):
                image_id += 1
                scene = sample_scene(rng, rng.randint(1, cfg.max_shapes))
                name = f"{image_id:012d}.jpg"
                draw(scene, cfg.image_size, rng).save(tmp / "coco/train2017" / name, quality=95)
                records.append(llava_record(f"{image_id:012d}", name, make(scene, rng), rng))
            (tmp / f"instruct/{kind}_{len(records)}.json").write_text(json.dumps(records))
            mixed += records
        rng.shuffle(mixed)
        (tmp / f"instruct/llava_instruct_{len(mixed)}.json").write_text(json.dumps(mixed))

        # POPE on held-out images, as COCO val2014 (scenes of exactly three objects, as POPE picks)
        (tmp / "coco/val2014").mkdir(parents=True)
        (tmp / "pope").mkdir()
        scenes = {}
        for i in range(cfg.pope_images):
            name = f"COCO_val2014_{900000 + i:012d}.jpg"
            scenes[name] = sample_scene(rng, 3)
            draw(scenes[name], cfg.image_size, rng).save(tmp / "coco/val2014" / name, quality=95)
        for split, rows in pope_questions(scenes, rng).items():
            (tmp / f"pope/coco_pope_{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

        write_nlp_fixtures(tmp / "nlp", seed=cfg.seed, n_truthfulqa=cfg.nlp_fixture_rows, n_ethics=cfg.nlp_fixture_rows)
        write_mm_benchmarks(cfg, tmp)


# Multimodal benchmarks (MME, Karpathy's caption splits, Unicorn) in their releases' layouts, from a random stream of
# their own so that they and the data above never shift each other.

FRENCH = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "white": "blanc"}
OOD_SITUATIONS = ("iid", "occlusion", "context", "pose", "weather")  # OODCV's kinds of shift that ShapesWorld can show
MME_FOLDERS_SPLIT = ("artwork", "celebrity", "landmark", "posters", "scene")  # images/ + questions_answers_YN/


def write_mm_benchmarks(cfg: Synth, out: Path) -> None:
    rng = random.Random(f"shapesworld-mm-{cfg.seed}")
    write_mme(cfg, out / "mme", rng)
    write_karpathy(cfg, out, rng)
    write_unicorn(cfg, out / "unicorn/ood", rng)


def _text_image(text: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(rng.randint(10, 50) for _ in range(3)))
    ImageDraw.Draw(img).text((size / 2, size / 2), text, fill=(240, 240, 240), anchor="mm",
                             font=ImageFont.load_default(size=max(8, size // 5)))
    return img


def _other(rng: random.Random, pool, *not_these):
    return rng.choice([x for x in pool if x not in not_these])


def mme_pair(subtask: str, scene: list[Shape], size: int, rng: random.Random) -> tuple[Image.Image, str, str]:
    """An image and its two questions (the true one first, as MME's files), ShapesWorld's analogue of each subtask."""
    s = rng.choice(scene)
    kinds, colors, n = [x.kind for x in scene], [x.color for x in scene], len(scene)
    word = rng.choice(sorted(COLORS))
    match subtask:
        case "existence":
            yes, no = (f"Is there {article(k)} {k} in this image?" for k in (s.kind, _other(rng, SHAPES, *kinds)))
        case "count":
            yes, no = (f"{'Are' if m > 1 else 'Is'} there exactly {m} shape{'s' * (m > 1)} in this image?"
                       for m in (n, _other(rng, range(1, 5), n)))
        case "position":
            yes, no = (f"Is the {s.kind} in the {c} of the image?" for c in (CELLS[s.cell], _other(rng, CELLS, CELLS[s.cell])))
        case "color":
            yes, no = (f"Is the {s.kind} {c}?" for c in (s.color, _other(rng, sorted(COLORS), s.color)))
        case "posters":
            other = sample_scene(rng, n)
            while {x.name for x in other} == {x.name for x in scene}:
                other = sample_scene(rng, n)
            yes, no = (f'Is this picture titled "{_listing(sc)}"?' for sc in (scene, other))
        case "celebrity":
            yes, no = (f"Is the {s.color} shape {article(k)} {k}?" for k in (s.kind, _other(rng, SHAPES, s.kind)))
        case "scene":
            yes, no = (f"Does this image show shapes on a {tone} background?" for tone in ("dark", "bright"))
        case "landmark":
            yes, no = (f"Is there {article(c)} {c} {s.kind} in this image?" for c in (s.color, _other(rng, sorted(COLORS), s.color)))
        case "artwork":
            yes, no = (f"Is this picture painted with some {c}?" for c in (s.color, _other(rng, sorted(COLORS), *colors)))
        case "OCR":
            yes, no = (f'Is the word in the image "{w}"?' for w in (word, _other(rng, sorted(COLORS), word)))
            return _text_image(word, size, rng), f"{yes} Please answer yes or no.", f"{no} Please answer yes or no."
        case "commonsense_reasoning":
            yes, no = (f"If the {s.name} were removed, would {m} shape{'s' * (m != 1)} remain?" for m in (n - 1, n))
        case "numerical_calculation":
            total = sum(CORNERS[k] for k in kinds)
            yes, no = (f"Do the shapes in the image have {t} corners altogether?" for t in (total, total + rng.randint(1, 3)))
        case "text_translation":
            yes, no = (f'Is it appropriate to translate the word in the image into English as "{w}"?'
                       for w in (word, _other(rng, sorted(COLORS), word)))
            return _text_image(FRENCH[word], size, rng), f"{yes} Please answer yes or no.", f"{no} Please answer yes or no."
        case "code_reasoning":
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            yes, no = (f"Is the result of the expression in the image {r}?" for r in (a + b, a + b + rng.choice((-1, 1))))
            return _text_image(f"{a}+{b}", size, rng), f"{yes} Please answer yes or no.", f"{no} Please answer yes or no."
        case _:
            raise ValueError(f"unknown MME subtask {subtask!r}")
    return draw(scene, size, rng), f"{yes} Please answer yes or no.", f"{no} Please answer yes or no."


def write_mme(cfg: Synth, out: Path, rng: random.Random) -> None:
    """MME_Benchmark_release_version: two questions per image, cognition images as PNG, perception as JPEG."""
    for subtask in PERCEPTION + COGNITION:
        split = subtask in MME_FOLDERS_SPLIT
        image_dir = out / subtask / "images" if split else out / subtask
        qa_dir = out / subtask / "questions_answers_YN" if split else out / subtask
        image_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        for i in range(cfg.mme_images):
            img, yes, no = mme_pair(subtask, sample_scene(rng, rng.randint(1, cfg.max_shapes)), cfg.image_size, rng)
            stem = f"{subtask.lower()}_{i:04d}"
            img.save(image_dir / f"{stem}.{'png' if subtask in COGNITION else 'jpg'}")
            (qa_dir / f"{stem}.txt").write_text(f"{yes}\tYes\n{no}\tNo\n")


def caption_references(scene: list[Shape], rng: random.Random) -> list[str]:
    """Five captions of one image by five "annotators": other words, other orders."""
    n = len(scene)
    templates = (
        "{} on a dark background.", "A picture of {}.", "There " + ("is" if n == 1 else "are") + " {} in the image.",
        "An image showing {} against a dark backdrop.", "{} drawn on a plain dark canvas.",
    )
    captions = [t.format(_listing(rng.sample(scene, n))) for t in templates]
    return [c[0].upper() + c[1:] for c in captions]


def write_karpathy(cfg: Synth, out: Path, rng: random.Random) -> None:
    """Karpathy's `dataset_coco.json` (images under coco/<filepath>/) and `dataset_flickr30k.json`
    (flickr30k/flickr30k-images/), each with a test and a train split."""
    (out / "captions").mkdir(parents=True, exist_ok=True)
    for dataset in ("coco", "flickr30k"):
        images, sentid = [], 0
        for split in ("test", "train"):
            for _ in range(cfg.caption_images):
                imgid = len(images)
                scene = sample_scene(rng, rng.randint(1, cfg.max_shapes))
                raws = caption_references(scene, rng)
                sentences = [{"tokens": [w.strip(".") for w in raw.lower().split()], "raw": raw, "imgid": imgid,
                              "sentid": sentid + k} for k, raw in enumerate(raws)]
                record = {"sentids": list(range(sentid, sentid + len(raws))), "imgid": imgid, "sentences": sentences,
                          "split": split}
                sentid += len(raws)
                if dataset == "coco":
                    folder = "val2014" if split == "test" else "train2014"  # Karpathy's test images are val2014's
                    cocoid = 800000 + imgid
                    record |= {"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "cocoid": cocoid}
                    image_dir = out / "coco" / folder
                else:
                    record["filename"] = f"{700000 + imgid}.jpg"
                    image_dir = out / "flickr30k/flickr30k-images"
                image_dir.mkdir(parents=True, exist_ok=True)
                draw(scene, cfg.image_size, rng).save(image_dir / record["filename"], quality=95)
                images.append(record)
        (out / f"captions/dataset_{dataset}.json").write_text(json.dumps({"images": images, "dataset": dataset}))


def out_of_distribution(img: Image.Image, situation: str, rng: random.Random) -> Image.Image:
    """OODCV's shifts on a ShapesWorld image: a bar hiding part of it, a bright background, a turn, or fog."""
    size = img.width
    match situation:
        case "iid":
            return img
        case "occlusion":
            y = rng.randint(0, size - size // 8)
            ImageDraw.Draw(img).rectangle((0, y, size, y + size // 8), fill=(128, 128, 128))
            return img
        case "context":  # the background is the most frequent colour: no shape fills a fifth of the image
            pixels = np.array(img)
            pixels[(pixels == max(img.getcolors(size * size))[1]).all(-1)] = [rng.randint(190, 240) for _ in range(3)]
            return Image.fromarray(pixels)
        case "pose":
            return img.rotate(rng.choice((90, 180, 270)))
        case "weather":
            return Image.blend(img, Image.new("RGB", img.size, (200, 200, 205)), 0.45)
    raise ValueError(f"unknown situation {situation!r}")


def sketch(img: Image.Image) -> Image.Image:
    """Dark outlines on white, as a hand-drawn sketch."""
    edges = img.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 24 else 0)
    return ImageOps.invert(ImageOps.expand(edges.crop((1, 1, img.width - 1, img.height - 1)), 1))  # no frame


def write_unicorn(cfg: Synth, out: Path, rng: random.Random) -> None:
    """Unicorn's `ood/`: OODCV-VQA (yes/no and counting on shifted images) and Sketchy-VQA (yes/no on sketches)."""
    (out / "oodcv-vqa/images").mkdir(parents=True, exist_ok=True)
    oodcv = []
    for i in range(cfg.unicorn_images):
        scene = sample_scene(rng, rng.randint(1, cfg.max_shapes))
        situation = rng.choice(OOD_SITUATIONS)
        name = f"images/oodcv_{i:05d}.jpg"
        out_of_distribution(draw(scene, cfg.image_size, rng), situation, rng).save(out / "oodcv-vqa" / name, quality=95)
        if rng.random() < 0.5:
            kind = rng.choice([s.kind for s in scene]) if rng.random() < 0.5 else _other(rng, SHAPES, *(s.kind for s in scene))
            truth = "Yes" if kind in {s.kind for s in scene} else "No"
            question, options = f"Is there {article(kind)} {kind} in the image?", ["A. Yes", "B. No"]
            letter = "A" if truth == "Yes" else "B"
        else:
            truth = str(len(scene))
            first, second = sorted([truth, str(_other(rng, range(6), len(scene)))])
            question, options = "How many shapes are there in the image?", [f"A. {first}", f"B. {second}"]
            letter = "A" if truth == first else "B"
        oodcv.append({"image": name, "question": question, "answer": letter, "text_answer": truth, "options": options,
                      "situation": situation})
    (out / "oodcv-vqa/oodcv-vqa.json").write_text(json.dumps(oodcv, indent=1))

    sketchy = []
    for i in range(cfg.unicorn_images):
        shape = sample_scene(rng, 1)
        name = f"skechydata/png/{shape[0].kind}/{i}.png"  # sic: the release's folder name
        (out / "sketchy-vqa" / name).parent.mkdir(parents=True, exist_ok=True)
        sketch(draw(shape, cfg.image_size, rng)).save(out / "sketchy-vqa" / name)
        kind = shape[0].kind if rng.random() < 0.5 else _other(rng, SHAPES, shape[0].kind)
        sketchy.append({"image": name, "question": f"Is there {article(kind)} {kind} in the image?",
                        "answer": "Yes" if kind == shape[0].kind else "No"})
    (out / "sketchy-vqa/sketchy-vqa.json").write_text(json.dumps(sketchy, indent=1))
