"""Stage `eval_mm`: the paper's multimodal benchmarks on an image-tuned model (Tables 4 and 5), and the contrast of a
text-only-tuned one given the same image path.

MME, POPE, COCO and Flickr30k captions, COCO-C and Unicorn, each read from its release's layout and scored as its
official code does; batched generation with the backbone's conversation template; one MLflow run per benchmark family
(tag `family`), every prediction logged as a table; all metrics in results/eval_mm/<backbone>-<variant>.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
from PIL import Image
from tqdm import tqdm

from sightbeyond.config import EvalMM, Modality, Params, Tuning
from sightbeyond.io import MalformedFile, as_rgb, atomic_dir, check_writable, image_mode_problem, write_json
from sightbeyond.layout import Cell, split_dir
from sightbeyond.model.llava import STOP_STRINGS, load_tuned, template_for, text_cell_with_vision, tuned_dir
from sightbeyond.tasks import captions, corruptions, mme, pope, reliance, unicorn
from sightbeyond.tracking.runs import logged_model, stage_run


# Each benchmark family's module holds its reading (`read`: its data and images), its evaluation (`evaluate`: asks,
# scores, logs its predictions) and the paths it reads (`inputs`); coco before coco_c, which compares with it.
# `reliance` (image reliance on the cell's held-out records) is built per cell: `families`.
FAMILIES = {"mme": mme, "pope": pope, "coco": captions.COCO, "flickr30k": captions.FLICKR30K, "coco_c": corruptions,
            "unicorn": unicorn, "reliance": None}


def families(params: Params, chat_template: str | None = None) -> dict:
    return FAMILIES | {"reliance": reliance.Family(split_dir("image", params.data), params.hparams.stage2.max_length,
                                                   params.prepare.seed, chat_template)}


def load_benchmarks(cfg: EvalMM, found: dict = FAMILIES) -> dict:
    """Every selected benchmark, read and checked (layout, answers, each image present and in a mode the encoder
    can be shown) before a model loads; a bad image is named with the file and line that ask for it."""
    data: dict = {}
    images: dict[Path, str] = {}
    read: dict[tuple[Path, ...], tuple] = {}  # families over the same files (coco, coco_c) read them once
    for family in cfg.benchmarks:
        files = tuple(found[family].inputs(cfg))
        data[family], asked = read[files] = read.get(files) or found[family].read(cfg)
        images |= {path: where for path, where in asked.items() if path not in images}
    missing = [(where, path) for path, where in images.items() if not path.is_file()]
    if missing:
        where, path = missing[0]
        raise FileNotFoundError(f"{len(missing)} benchmark images missing; the first: {where}: image {path} not found")
    for path, where in tqdm(images.items(), desc="check benchmark images", unit=" images", mininterval=2):
        if problem := image_problem(path):
            raise MalformedFile(where, f"image {path}", problem)
    return data


def image_problem(path: Path) -> str | None:
    """Why the image at `path` cannot be shown to the model, from its header (and its pixels for mode I), or None."""
    try:
        with Image.open(path) as image:
            return image_mode_problem(image)
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a truncated or foreign file
        return f"unreadable image ({err})"


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as f:
            return as_rgb(f, str(path))
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a truncated or foreign file
        raise MalformedFile(path, "image", f"unreadable image ({err})") from None


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

    def first_token(self, conversation: list[dict], answer: str) -> int:
        """The token an assistant answer starts with after this template's generation prompt (" Yes" after v1's
        "ASSISTANT:", "Yes" after ChatML's "assistant\n")."""
        tokenizer, render = self.processor.tokenizer, self.processor.apply_chat_template
        prompt = render(conversation, add_generation_prompt=True)
        full = render(conversation + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}])
        a, b = (tokenizer(t, add_special_tokens=False).input_ids for t in (prompt, full))
        return b[next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))]

    @torch.inference_mode()
    def margins(self, conversations: list[list[dict]], images: list[Path], *, yes: str, no: str, desc: str) -> list[float]:
        """logit(yes) - logit(no) at the first answer token of each conversation: a yes/no score whose ranking
        (its AUC) does not depend on where a biased model puts its threshold."""
        yes_id, no_id = (self.first_token(conversations[0], word) for word in (yes, no))
        out = []
        for i in tqdm(range(0, len(conversations), self.cfg.batch_size), desc=desc, unit="batch"):
            batch = range(i, min(i + self.cfg.batch_size, len(conversations)))
            prompts = [self.processor.apply_chat_template(conversations[j], add_generation_prompt=True) for j in batch]
            inputs = self.processor(text=prompts, images=[load_image(images[j]) for j in batch], padding=True,
                                    padding_side="left", return_tensors="pt", add_special_tokens=False).to(self.model.device)
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
            out += (logits[:, yes_id] - logits[:, no_id]).tolist()
        return out

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


def run(params: Params, tuning: Tuning, modality: Modality = "image") -> None:
    """An image cell's model, or a text cell's LLM with the stage-1 projector it never trained with (its contrast:
    `eval_mm.text_benchmarks`)."""
    cell = Cell.of(params, tuning, modality)
    cfg = params.eval_mm
    if modality == "text":
        cfg = cfg.model_copy(update={"benchmarks": cfg.text_benchmarks})
    data = load_benchmarks(cfg, families(params))  # every benchmark file read and checked before the model loads
    check_writable(cell.results("eval_mm").parent, cell.predictions("eval_mm").parent)
    model, processor = load_tuned(params, tuning, "image") if modality == "image" else text_cell_with_vision(params, tuning)
    found = families(params, processor.chat_template)  # reliance: batched in the template the model was tuned in
    template = cfg.template or params.active.template
    if cfg.template is not None:  # asked in another template than the model was tuned in (the authors': conv_vicuna_v0)
        processor.chat_template = processor.tokenizer.chat_template = template_for(processor.tokenizer, cfg.template,
                                                                                    params.image_start_end,
                                                                                    params.active.document_start)
    ask = Generator(model, processor, cfg, template)
    weights = tuned_dir(params, tuning, modality)
    model_id = logged_model(params, weights, name=cell.run_name("stage2"), model_type="stage2")
    metrics: dict[str, float] = {}
    # every family's prediction tables, as MLflow holds them, are also the stage's DVC output: a clone without that
    # output evaluates (and logs) again
    with atomic_dir(cell.predictions("eval_mm")) as out:
        for family in sorted(cfg.benchmarks, key=list(FAMILIES).index):
            with stage_run("eval_mm", params, name=f"{cell.run_name('eval_mm')}-{family}",
                           tags={"tuning": tuning, "modality": modality, "model": cell.model, "family": family},
                           param_sections=("eval_mm",),
                           inputs=[cell.stage2_dir, *([] if modality == "image" else [Cell.of(params).stage1_dir]),
                                   *found[family].inputs(cfg)]) as run:
                got = found[family].evaluate(ask, data[family], cfg)
                if family == "coco_c":  # its drop is against the clean COCO CIDEr, which the coco family measured
                    got |= corruptions.relative_drop(got["coco_c/cider"], metrics["coco/cider"])
                mlflow.log_metrics(got, model_id=model_id)
                mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(out / family))
            metrics |= got
    write_json(cell.results("eval_mm"), metrics)
