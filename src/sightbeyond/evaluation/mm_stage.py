"""Stage `eval_mm`: the paper's multimodal benchmarks on an image-tuned model (Tables 4 and 5).

MME, POPE, COCO and Flickr30k captions, COCO-C and Unicorn, each read from its release's layout and scored as its
official code does; batched generation with the backbone's conversation template; one MLflow run per benchmark family
(tag `family`), every prediction logged as a table; all metrics in results/eval_mm/<backbone>-<variant>.json.
"""

from __future__ import annotations

import json
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from sightbeyond.config import EvalMM, Params, Tuning
from sightbeyond.tasks import captions, mme, unicorn
from sightbeyond.tasks.corruptions import corrupt
from sightbeyond.tasks.pope import parse_answer as pope_parse
from sightbeyond.tasks.pope import score_pope
from sightbeyond.io import atomic_dir, check_writable, write_json
from sightbeyond.layout import Cell
from sightbeyond.model.llava import STOP_STRINGS, template_for



def read_pope(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {n}: unparsable JSON ({err.msg})") from None
        if not {"question_id", "image", "text", "label"} <= row.keys() or row["label"] not in ("yes", "no"):
            raise ValueError(f"{path}: line {n}: expected question_id, image, text and a yes/no label, got {row}")
        rows.append(row)
    return rows


def load_benchmarks(cfg: EvalMM) -> dict:
    """Every selected benchmark, read and checked (layout, answers, images present) before a model loads."""
    data: dict = {}
    images: list[Path] = []
    if "mme" in cfg.benchmarks:
        data["mme"] = mme.read_mme(cfg.mme_dir, [t for t in mme.PERCEPTION + mme.COGNITION if t not in cfg.mme_exclude])
        images += [q.path for q in data["mme"]]
    if "pope" in cfg.benchmarks:
        data["pope"] = {split: read_pope(cfg.pope_dir / f"coco_pope_{split}.json") for split in cfg.splits}
        for rows in data["pope"].values():
            for row in rows:
                row["path"] = cfg.pope_images / row["image"]
            images += [row["path"] for row in rows]
    for name, karpathy, root in (("coco", cfg.coco_karpathy, cfg.coco_images),
                                 ("flickr30k", cfg.flickr30k_karpathy, cfg.flickr30k_images)):
        if name in cfg.benchmarks:
            data[name] = captions.read_karpathy(karpathy, root)
            images += [i.path for i in data[name][0]]
            captions.in_context_examples(data[name][1], cfg.caption_examples, cfg.seed)  # enough training captions
    if "unicorn" in cfg.benchmarks:
        data["unicorn"] = {"oodcv": unicorn.read_oodcv(cfg.unicorn_dir), "sketch": unicorn.read_sketchy(cfg.unicorn_dir)}
        images += [item["path"] for items in data["unicorn"].values() for item in items]
    missing = sorted({str(p) for p in images if not p.is_file()})
    if missing:
        raise FileNotFoundError(f"{len(missing)} benchmark images missing, e.g. {missing[:3]}")
    if {"coco", "flickr30k"} & set(cfg.benchmarks):
        captions.require_java()
    return data


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as f:
            return f.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a truncated or foreign file
        raise ValueError(f"{path}: unreadable image ({err})") from None


def qa_conversation(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


class Generator:
    """Batched generation: greedy, or the authors' sampling (`do_sample`: top-k, temperature, beams), reseeded per
    call so no benchmark depends on another; answers end at the template's stop string where it has one (v0's ###)."""

    def __init__(self, model, processor, cfg: EvalMM, template: str):
        self.model, self.processor, self.cfg = model, processor, cfg
        self.stop = STOP_STRINGS.get(template)

    def generation_kwargs(self, max_new_tokens: int) -> dict:
        cfg = self.cfg
        sampling = ({"do_sample": True, "top_k": cfg.top_k, "temperature": cfg.temperature} if cfg.do_sample
                    else {"do_sample": False, "top_k": None, "top_p": None, "temperature": None})
        stop = {"stop_strings": [self.stop], "tokenizer": self.processor.tokenizer} if self.stop else {}
        return {"max_new_tokens": max_new_tokens, "num_beams": cfg.num_beams, **sampling, **stop}

    def answer(self, text: str) -> str:
        return (text.split(self.stop)[0] if self.stop else text).strip()

    @torch.inference_mode()
    def __call__(self, conversations: list[list[dict]], images: list[Path], *, max_new_tokens: int, desc: str,
                 transforms: list[Callable[[Image.Image], Image.Image]] | None = None) -> list[str]:
        cfg, processor = self.cfg, self.processor
        if cfg.do_sample:
            torch.manual_seed(cfg.seed)
        kwargs = self.generation_kwargs(max_new_tokens)
        answers = []
        for i in tqdm(range(0, len(conversations), cfg.batch_size), desc=desc, unit="batch"):
            batch = range(i, min(i + cfg.batch_size, len(conversations)))
            prompts = [processor.apply_chat_template(conversations[j], add_generation_prompt=True) for j in batch]
            pictures = [load_image(images[j]) for j in batch]
            if transforms:
                pictures = [transforms[j](p) for j, p in zip(batch, pictures)]
            inputs = processor(text=prompts, images=pictures, padding=True, padding_side="left", return_tensors="pt",
                               add_special_tokens=False).to(self.model.device)
            out = self.model.generate(**inputs, **kwargs)
            answers += processor.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        return [self.answer(a) for a in answers]


def eval_mme(ask: Generator, data: dict, cfg: EvalMM, done: dict) -> dict[str, float]:
    import mlflow

    questions = data["mme"]
    answers = ask([qa_conversation(q.question) for q in questions], [q.path for q in questions],
                  max_new_tokens=cfg.max_new_tokens, desc="MME")
    results: dict[str, list[str]] = {}
    for q, a in zip(questions, answers):
        results.setdefault(q.subtask, []).append(mme.eval_tool_line(q, a))
    for subtask, lines in results.items():  # what the official eval_tool/calculation.py reads
        mlflow.log_text("".join(line + "\n" for line in lines), f"mme_eval_tool/{subtask}.txt")
    parsed = [mme.parse_answer(mme.one_field(a)) for a in answers]
    mlflow.log_table({"subtask": [q.subtask for q in questions], "image": [q.image for q in questions],
                      "question": [q.question for q in questions], "truth": [q.truth for q in questions],
                      "answer": answers, "parsed": parsed,
                      "correct": [p == q.truth.lower() for p, q in zip(parsed, questions)]},
                     artifact_file="mme_predictions.json")
    return mme.mme_metrics(results)


def eval_pope(ask: Generator, data: dict, cfg: EvalMM, done: dict) -> dict[str, float]:
    import mlflow

    metrics = {}
    for split, questions in data["pope"].items():
        answers = ask([qa_conversation(q["text"]) for q in questions], [q["path"] for q in questions],
                      max_new_tokens=cfg.max_new_tokens, desc=f"POPE {split}")
        scores = score_pope(questions, [{"question_id": q["question_id"], "answer": a} for q, a in zip(questions, answers)])
        metrics |= {f"pope_{split}/{k}": v for k, v in scores.items()}
        mlflow.log_table({"question_id": [q["question_id"] for q in questions], "image": [q["image"] for q in questions],
                          "question": [q["text"] for q in questions], "label": [q["label"] for q in questions],
                          "answer": answers, "parsed": [pope_parse(a) for a in answers]},
                         artifact_file=f"pope_{split}_predictions.json")
    return metrics


def _caption_prompt(cfg: EvalMM, train: list[str], name: str) -> list[dict]:
    import mlflow

    examples = captions.in_context_examples(train, cfg.caption_examples, cfg.seed)
    mlflow.log_dict({"prompt": cfg.caption_prompt, "examples": examples}, f"{name}_in_context_examples.json")
    return captions.caption_conversation(cfg.caption_prompt, examples)


def _caption_table(images: list[captions.CaptionImage], got: dict[str, str], per_image: dict[str, float], **extra) -> dict:
    return {**extra, "image": [i.key for i in images], "caption": [got[i.key] for i in images],
            "cider": [per_image[i.key] for i in images], "references": [" | ".join(i.references) for i in images]}


def eval_captions(name: str) -> Callable[[Generator, dict, EvalMM, dict], dict[str, float]]:
    def evaluate(ask: Generator, data: dict, cfg: EvalMM, done: dict) -> dict[str, float]:
        import mlflow

        images, train = data[name]
        conversation = _caption_prompt(cfg, train, name)
        answers = ask([conversation] * len(images), [i.path for i in images], max_new_tokens=cfg.caption_max_new_tokens,
                      desc=name)
        got = {i.key: a for i, a in zip(images, answers)}
        score, per_image = captions.cider_scores({i.key: list(i.references) for i in images}, {name: got})[name]
        mlflow.log_table(_caption_table(images, got, per_image), artifact_file=f"{name}_predictions.json")
        return {f"{name}/cider": score}

    return evaluate


def eval_coco_c(ask: Generator, data: dict, cfg: EvalMM, done: dict) -> dict[str, float]:
    """Every corruption x severity cell in one generation pass (full batches), scored cell by cell."""
    import mlflow

    images, train = data["coco"]
    conversation = _caption_prompt(cfg, train, "coco_c")
    cells = [(c, s) for c in cfg.corruptions for s in cfg.severities]
    jobs = [(cell, image) for cell in cells for image in images]
    transforms = [lambda img, c=c, s=s, key=image.key: corrupt(img, c, s, seed=cfg.seed, key=key) for (c, s), image in jobs]
    answers = ask([conversation] * len(jobs), [image.path for _, image in jobs], transforms=transforms,
                  max_new_tokens=cfg.caption_max_new_tokens, desc="COCO-C")
    got: dict[str, dict[str, str]] = {f"{c}_{s}": {} for c, s in cells}
    for ((c, s), image), answer in zip(jobs, answers):
        got[f"{c}_{s}"][image.key] = answer
    scores = captions.cider_scores({i.key: list(i.references) for i in images}, got)
    metrics = {f"coco_c/{cell}/cider": score for cell, (score, _) in scores.items()}
    metrics["coco_c/cider"] = statistics.fmean(score for score, _ in scores.values())
    clean = done["coco/cider"]
    if clean > 0:
        metrics["coco_c/relative_drop"] = 100 * (metrics["coco_c/cider"] - clean) / clean
    else:
        warnings.warn("coco_c/relative_drop not logged: the clean COCO CIDEr is 0", stacklevel=1)
    table: dict[str, list] = {}
    for (c, s), (_, per_image) in zip(cells, scores.values()):
        for column, values in _caption_table(images, got[f"{c}_{s}"], per_image, corruption=[c] * len(images),
                                             severity=[s] * len(images)).items():
            table.setdefault(column, []).extend(values)
    mlflow.log_table(table, artifact_file="coco_c_predictions.json")
    return metrics


def eval_unicorn(ask: Generator, data: dict, cfg: EvalMM, done: dict) -> dict[str, float]:
    import mlflow

    oodcv, sketch = data["unicorn"]["oodcv"], data["unicorn"]["sketch"]
    items = oodcv + sketch
    answers = ask([qa_conversation(i["question"]) for i in items], [i["path"] for i in items],
                  max_new_tokens=cfg.max_new_tokens, desc="Unicorn")
    ood_answers, sketch_answers = answers[:len(oodcv)], answers[len(oodcv):]
    ood = unicorn.oodcv_accuracy(oodcv, [{"image": i["image"], "prediction": a} for i, a in zip(oodcv, ood_answers)])
    sk = unicorn.sketchy_accuracy(sketch, [{"image": i["image"], "answer": a} for i, a in zip(sketch, sketch_answers)])
    mlflow.log_table({"image": [i["image"] for i in oodcv], "situation": [i["situation"] for i in oodcv],
                      "question": [i["question"] for i in oodcv], "text_answer": [i["text_answer"] for i in oodcv],
                      "prediction": ood_answers,
                      "correct": [unicorn.oodcv_correct(a, i["text_answer"]) for i, a in zip(oodcv, ood_answers)]},
                     artifact_file="unicorn_oodcv_predictions.json")
    mlflow.log_table({"image": [i["image"] for i in sketch], "question": [i["question"] for i in sketch],
                      "label": [i["answer"] for i in sketch], "answer": sketch_answers,
                      "parsed": [unicorn.sketchy_parse(a) or "unparsed" for a in sketch_answers]},
                     artifact_file="unicorn_sketch_predictions.json")
    return {"unicorn_oodcv/acc": ood["acc"], "unicorn_oodcv/scored": ood["scored"],
            "unicorn_sketch/acc": sk["acc"], "unicorn_sketch/unparsed": sk["unparsed"],
            "unicorn_sketch/unreadable": sk["unreadable"]}


FAMILIES = {"mme": eval_mme, "pope": eval_pope, "coco": eval_captions("coco"), "flickr30k": eval_captions("flickr30k"),
            "coco_c": eval_coco_c, "unicorn": eval_unicorn}


def family_inputs(cfg: EvalMM, family: str) -> list[Path]:
    return {"mme": [cfg.mme_dir], "pope": [cfg.pope_dir, cfg.pope_images],
            "coco": [cfg.coco_karpathy, cfg.coco_images], "coco_c": [cfg.coco_karpathy, cfg.coco_images],
            "flickr30k": [cfg.flickr30k_karpathy, cfg.flickr30k_images], "unicorn": [cfg.unicorn_dir]}[family]


def run(params: Params, tuning: Tuning) -> None:
    import mlflow

    from sightbeyond.model.llava import load_tuned, tuned_dir
    from sightbeyond.tracking.runs import logged_model, stage_run

    cell = Cell.of(params, tuning, "image")
    cfg = params.eval_mm
    data = load_benchmarks(cfg)  # every benchmark file read and checked before the model loads
    check_writable(cell.results("eval_mm").parent, cell.predictions("eval_mm").parent)
    model, processor = load_tuned(params, tuning, "image")
    template = cfg.template or params.active.template
    if cfg.template is not None:  # asked in another template than the model was tuned in (the authors': v0)
        processor.chat_template = processor.tokenizer.chat_template = template_for(processor.tokenizer, cfg.template,
                                                                                    params.image_start_end)
    ask = Generator(model, processor, cfg, template)
    weights = tuned_dir(params, tuning, "image")
    model_id = logged_model(params, weights, name=cell.run_name("stage2"), model_type="stage2")
    metrics: dict[str, float] = {}
    # every family's prediction tables, as MLflow holds them, are also the stage's DVC output: a clone without that
    # output evaluates (and logs) again
    with atomic_dir(cell.predictions("eval_mm")) as out:
        for family in sorted(cfg.benchmarks, key=list(FAMILIES).index):  # coco before coco_c, which compares with it
            with stage_run("eval_mm", params, name=f"{cell.run_name('eval_mm')}-{family}",
                           tags={"tuning": tuning, "modality": "image", "model": cell.model, "family": family},
                           param_sections=("eval_mm",),
                           inputs=[cell.stage2_dir, *family_inputs(cfg, family)]) as run:
                got = FAMILIES[family](ask, data, cfg, metrics)
                mlflow.log_metrics(got, model_id=model_id)
                mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(out / family))
            metrics |= got
    write_json(cell.results("eval_mm"), metrics)
