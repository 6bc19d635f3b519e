"""COCO and Flickr30k captioning on Karpathy's test split, scored with pycocoevalcap's CIDEr (x100).

Karpathy's `dataset_coco.json` / `dataset_flickr30k.json`: `{"images": [{"filename", "split", "sentences": [{"raw"}],
"filepath" (COCO only)}]}`; an image lies at `<images>/<filepath>/<filename>`. The paper's zero-shot prompt carries
three text-only examples (the task's prompt and a training caption, no image), as OpenFlamingo's zero-shot evaluation.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from sightbeyond.io import ConfigError, MalformedFile

TRAIN_SPLITS = ("train", "restval")


@dataclass(frozen=True)
class CaptionImage:
    key: str                    # the file name: unique in a Karpathy file, and what predictions are keyed by
    path: Path
    references: tuple[str, ...]
    asked: str = ""             # the file and record that name it


def read_karpathy(path: Path, images: Path, split: str = "test") -> tuple[list[CaptionImage], list[str]]:
    """The split's images with their reference captions, and the training captions (the in-context examples' pool)."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))["images"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise MalformedFile(path, "top level", f"not a Karpathy split file ({err})") from None
    if not isinstance(records, list):
        raise MalformedFile(path, "images", "expected a list of images")
    test, train = [], []
    for n, rec in enumerate(records):
        where = f"images[{n}]"
        if not isinstance(rec, dict) or not {"filename", "split", "sentences"} <= rec.keys():
            raise MalformedFile(path, where, f"expected filename, split and sentences, got {str(rec)[:200]}")
        if not isinstance(rec["filename"], str) or not isinstance(rec.get("filepath", ""), str) \
                or not isinstance(rec["sentences"], list) \
                or not all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in rec["sentences"]):
            raise MalformedFile(path, where, "filename and filepath must be text, sentences a list of {raw: text}")
        raws = [s["raw"].strip() for s in rec["sentences"]]
        if rec["split"] == split:
            if not any(raws):
                raise MalformedFile(path, where, f"{rec['filename']} has no reference captions")
            test.append(CaptionImage(rec["filename"], Path(images) / rec.get("filepath", "") / rec["filename"],
                                     tuple(r for r in raws if r), f"{path}: {where}"))
        elif rec["split"] in TRAIN_SPLITS:
            train += [r for r in raws if r]
    if not test:
        raise MalformedFile(path, "images", f"no images in split {split!r}")
    if len({t.key for t in test}) != len(test):
        raise MalformedFile(path, "images", f"file names repeat in split {split!r}")
    return test, train


def in_context_examples(train_captions: list[str], n: int, seed: int) -> list[str]:
    if len(train_captions) < n:
        raise ConfigError(f"eval_mm.caption_examples: {n} in-context examples asked, the training split holds "
                          f"{len(train_captions)} captions")
    return random.Random(seed).sample(train_captions, n)


def caption_conversation(prompt: str, examples: list[str]) -> list[dict]:
    messages = []
    for caption in examples:
        messages += [{"role": "user", "content": [{"type": "text", "text": prompt}]},
                     {"role": "assistant", "content": [{"type": "text", "text": caption}]}]
    return messages + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def require_java() -> None:
    if shutil.which("java") is None:
        raise FileNotFoundError("java not found: pycocoevalcap's PTB tokenizer (Stanford CoreNLP) runs on Java; "
                                "install a JRE, e.g. `apt-get install default-jre-headless`")


def _one_line(caption: str) -> str:
    # pycocoevalcap replaces only "\n", but Java also ends lines at "\r" and "\u2028": such a caption would shift every
    # later caption onto another image's tokens
    return " ".join(caption.splitlines())


def cider_scores(references: dict[str, list[str]], cells: dict[str, dict[str, str]]) -> dict[str, tuple[float, dict[str, float]]]:
    """CIDEr x100 (and per image) of each cell's captions against the same references, as pycocoevalcap's COCOEvalCap.

    PTBTokenizer works line by line, so all cells go through one Java process: the same tokens as one call per cell.
    Every cell must caption exactly the referenced images, as pycocoevalcap asserts.
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    for name, captions in cells.items():
        if captions.keys() != references.keys():
            missing, extra = sorted(references.keys() - captions.keys()), sorted(captions.keys() - references.keys())
            raise ValueError(f"{name}: captions do not match the references' images (missing {missing[:3]}, extra {extra[:3]})")
    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({k: [{"caption": _one_line(c)} for c in v] for k, v in references.items()})
    hyps = tokenizer.tokenize({(name, k): [{"caption": _one_line(c)}] for name, captions in cells.items()
                               for k, c in captions.items()})
    out = {}
    for name, captions in cells.items():
        keys = list(captions)
        score, per_image = Cider().compute_score({k: refs[k] for k in keys}, {k: hyps[name, k] for k in keys})
        out[name] = (100 * float(score), {k: 100 * float(s) for k, s in zip(keys, per_image)})
    return out


def prompt(cfg, train: list[str], name: str) -> list[dict]:
    """The zero-shot captioning conversation, its in-context examples logged to the active run."""
    import mlflow

    examples = in_context_examples(train, cfg.caption_examples, cfg.seed)
    mlflow.log_dict({"prompt": cfg.caption_prompt, "examples": examples}, f"{name}_in_context_examples.json")
    return caption_conversation(cfg.caption_prompt, examples)


def prediction_table(images: list[CaptionImage], got: dict[str, str], per_image: dict[str, float], **extra) -> dict:
    return {**extra, "image": [i.key for i in images], "caption": [got[i.key] for i in images],
            "cider": [per_image[i.key] for i in images], "references": [" | ".join(i.references) for i in images]}


@dataclass(frozen=True)
class Captioning:
    """The eval_mm stage's family for one captioning dataset (see mme.py); `cfg` is params.eval_mm."""

    name: str  # coco | flickr30k: the eval_mm settings <name>_karpathy and <name>_images

    def inputs(self, cfg) -> list[Path]:
        return [getattr(cfg, f"{self.name}_karpathy"), getattr(cfg, f"{self.name}_images")]

    def read(self, cfg) -> tuple[tuple[list[CaptionImage], list[str]], list[Path]]:
        images, train = read_karpathy(*self.inputs(cfg))
        in_context_examples(train, cfg.caption_examples, cfg.seed)  # enough training captions
        require_java()
        return (images, train), {i.path: i.asked for i in images}

    def evaluate(self, ask, data: tuple[list[CaptionImage], list[str]], cfg) -> dict[str, float]:
        import mlflow

        images, train = data
        answers = ask([prompt(cfg, train, self.name)] * len(images), [i.path for i in images],
                      max_new_tokens=cfg.caption_max_new_tokens, desc=self.name)
        got = {i.key: a for i, a in zip(images, answers)}
        score, per_image = cider_scores({i.key: list(i.references) for i in images}, {self.name: got})[self.name]
        mlflow.log_table(prediction_table(images, got, per_image), artifact_file=f"{self.name}_predictions.json")
        return {f"{self.name}/cider": score}


COCO, FLICKR30K = Captioning("coco"), Captioning("flickr30k")
