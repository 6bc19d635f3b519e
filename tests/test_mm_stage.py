"""The eval_mm stage: ShapesWorld's benchmarks read back by the real-layout readers, bad inputs stopped, and (slow) a
whole run logging one MLflow run per benchmark family, COCO-C's twelve cells included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sightbeyond.config import load_params
from sightbeyond.embedded.shapesworld import write_mm_benchmarks
from sightbeyond.evaluation.mm_stage import load_benchmarks, load_image
from sightbeyond.io import BadInput

ROOT = Path(__file__).resolve().parents[1]
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer runs on Java")


def params_at(data: Path, **overrides):
    paths = {"eval_mm.mme_dir": str(data / "mme"), "eval_mm.coco_karpathy": str(data / "captions/dataset_coco.json"),
             "eval_mm.coco_images": str(data / "coco"),
             "eval_mm.flickr30k_karpathy": str(data / "captions/dataset_flickr30k.json"),
             "eval_mm.flickr30k_images": str(data / "flickr30k/flickr30k-images"),
             "eval_mm.unicorn_dir": str(data / "unicorn/ood"),
             "synth.mme_images": 3, "synth.caption_images": 5, "synth.unicorn_images": 6}
    return load_params(ROOT / "params.yaml", overrides=paths | overrides)


@needs_java
def test_shapesworld_benchmarks_read_back_in_the_release_layouts(tmp_path):
    params = params_at(tmp_path, **{"eval_mm.benchmarks": ["mme", "coco", "flickr30k", "coco_c", "unicorn"]})
    write_mm_benchmarks(params.synth, tmp_path)
    data = load_benchmarks(params.eval_mm)
    mme = data["mme"]
    assert len({q.subtask for q in mme}) == 12 and not {"landmark", "artwork"} & {q.subtask for q in mme}
    assert len(mme) == 12 * 3 * 2
    assert [q.truth for q in mme] == ["Yes", "No"] * (12 * 3)  # a true and a false question about each image
    for name in ("coco", "flickr30k"):
        test, train = data[name]
        assert len(test) == 5 and len(train) == 5 * 5
        assert all(len(t.references) == 5 for t in test)
    assert {t.path.parent.name for t in data["coco"][0]} == {"val2014"}
    assert len(data["unicorn"]["oodcv"]) == len(data["unicorn"]["sketch"]) == 6
    assert {i["text_answer"] for i in data["unicorn"]["oodcv"]} <= {"Yes", "No", "0", "1", "2", "3", "4", "5"}

    again = tmp_path / "again"
    write_mm_benchmarks(params.synth, again)
    for f in tmp_path.rglob("*"):
        if f.is_file() and again not in f.parents:
            assert f.read_bytes() == (again / f.relative_to(tmp_path)).read_bytes(), f  # seeded: the same bytes


def test_missing_and_unreadable_images_stop(tmp_path):
    params = params_at(tmp_path, **{"eval_mm.benchmarks": ["unicorn"]})
    write_mm_benchmarks(params.synth, tmp_path)
    victim = tmp_path / "unicorn/ood/oodcv-vqa/images/oodcv_00002.jpg"
    victim.write_bytes(b"not a jpeg")
    # before the model loads, named with the question that asks for it
    with pytest.raises(BadInput, match=r"oodcv-vqa\.json: question \d+: image .*oodcv_00002\.jpg: unreadable image"):
        load_benchmarks(params.eval_mm)
    with pytest.raises(BadInput, match="oodcv_00002.jpg: image: unreadable image"):
        load_image(victim)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 benchmark images missing; the first: .*oodcv-vqa\.json: question \d+: "
                                                r"image .*oodcv_00002\.jpg not found"):
        load_benchmarks(params.eval_mm)


def test_coco_c_needs_coco(tmp_path):
    from sightbeyond.config import ConfigError

    with pytest.raises(ConfigError, match="coco_c's relative drop is against coco"):
        params_at(tmp_path, **{"eval_mm.benchmarks": ["coco_c"]})


@needs_java
@pytest.mark.slow
def test_eval_mm_logs_every_family(params_for, mlflow_store, tmp_path, monkeypatch):
    """A random tiny LLaVA on ShapesWorld's benchmarks: every family its own run, every COCO-C cell a metric."""
    import json

    import mlflow
    from transformers import AutoProcessor

    from sightbeyond.data.prepare import save
    from sightbeyond.evaluation import mm_stage
    from sightbeyond.model.llava import build_llava, load_processor
    from sightbeyond.layout import Cell

    data = tmp_path / "data"
    params = params_for(**{
        "eval_mm.mme_dir": str(data / "mme"), "eval_mm.coco_karpathy": str(data / "captions/dataset_coco.json"),
        "eval_mm.coco_images": str(data / "coco"), "eval_mm.flickr30k_karpathy": str(data / "captions/dataset_flickr30k.json"),
        "eval_mm.flickr30k_images": str(data / "flickr30k/flickr30k-images"), "eval_mm.unicorn_dir": str(data / "unicorn/ood"),
        "eval_mm.pope_dir": str(data / "pope"), "eval_mm.pope_images": str(data / "coco/val2014"),
        "eval_mm.splits": ["random"], "eval_mm.max_new_tokens": 4, "eval_mm.caption_max_new_tokens": 4,
        "synth.mme_images": 1, "synth.caption_images": 3, "synth.unicorn_images": 2})
    write_mm_benchmarks(params.synth, data)
    (data / "pope").mkdir()
    (data / "pope/coco_pope_random.json").write_text(  # COCO test images of the captions serve POPE's questions
        "".join(json.dumps({"question_id": i, "image": f"COCO_val2014_00000080000{i % 2}.jpg", "text": "Is there a star?",
                            "label": label}) + "\n" for i, label in enumerate(["yes", "no", "no", "yes"], 1)))
    monkeypatch.chdir(tmp_path)
    rows = [{"id": str(i), "images": [str(data / f"coco/val2014/COCO_val2014_00000080000{i % 3}.jpg")], "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Is there a star?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "No, there is no star in the image."}]}]}
        for i in range(6)]
    save(lambda: iter(rows), tmp_path / "data/prepared/full/image", with_image=True, heldout=3)  # the reliance family's
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(tmp_path))
    processor = load_processor(params)
    model = build_llava(params, processor.tokenizer)
    out = Cell.of(params, "ft", "image").stage2_dir
    model.save_pretrained(out)
    processor.save_pretrained(out)
    assert AutoProcessor.from_pretrained(out).chat_template

    mm_stage.run(params, "ft")

    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment], filter_string="tags.stage = 'eval_mm'")
    assert sorted(runs["tags.family"]) == sorted(["mme", "pope", "coco", "flickr30k", "coco_c", "unicorn", "reliance"])
    assert (runs.status == "FINISHED").all()
    coco_c = runs[runs["tags.family"] == "coco_c"].iloc[0]
    cells = [f"metrics.coco_c/{c}_{s}/cider" for c in ("gaussian_noise", "defocus_blur", "contrast", "brightness")
             for s in (1, 3, 5)]
    assert all(coco_c[c] >= 0 for c in cells)
    results = json.loads((tmp_path / "results/eval_mm/tiny-full-ft-image.json").read_text())
    for key in ["mme/perception", "mme/cognition", "mme/existence", "pope_random/acc", "pope_random/auc",
                "pope_random/auc_deranged", "reliance/gap", "reliance/loss_blank", "coco/cider", "flickr30k/cider",
                "coco_c/cider", "unicorn_oodcv/acc", "unicorn_sketch/acc", *(c.removeprefix("metrics.") for c in cells)]:
        assert key in results
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(coco_c.run_id)}
    assert "coco_c_predictions.json" in artifacts


def test_decoding_follows_the_params(params_for, tmp_path):
    """Greedy by default; the authors' sampling (top-k 50, temperature 0.2, one beam, seeded per call) on request;
    in their prompt (LLaVA's conv_vicuna_v0, its built-in example exchange before the question) an answer ends at
    '###'."""
    from PIL import Image

    from sightbeyond.evaluation.mm_stage import Generator
    from sightbeyond.model.llava import build_llava, load_processor

    greedy = params_for()
    assert greedy.eval_mm.caption_max_new_tokens == 10
    processor = load_processor(greedy)
    model = build_llava(greedy, processor.tokenizer).eval()
    kwargs = Generator(model, processor, greedy.eval_mm, "v1").generation_kwargs(7)
    assert (kwargs["do_sample"], kwargs["num_beams"], kwargs["max_new_tokens"], kwargs["temperature"]) == (False, 1, 7, None)
    assert "stop_strings" not in kwargs

    authors = params_for(**{"eval_mm.do_sample": True, "eval_mm.template": "conv_vicuna_v0"})
    ask = Generator(model, load_processor(authors, "conv_vicuna_v0"), authors.eval_mm, "conv_vicuna_v0")
    prompt = ask.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a star?"}]}],
        add_generation_prompt=True)
    assert "###Human: What are the key differences between renewable and non-renewable energy sources?###Assistant: " \
           "Renewable energy sources" in prompt
    assert prompt.endswith("economic and social instability.\n###Human: <image>\nIs there a star?###Assistant:")
    kwargs = ask.generation_kwargs(7)
    assert (kwargs["do_sample"], kwargs["top_k"], kwargs["temperature"], kwargs["num_beams"]) == (True, 50, 0.2, 1)
    assert kwargs["stop_strings"] == ["###"] and ask.answer(" Yes, there is.\n###") == "Yes, there is."
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(image)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a star?"}]}]
    first, again = (ask([conversation] * 3, [image] * 3, max_new_tokens=5, desc="t") for _ in range(2))
    assert first == again and all("###" not in a for a in first)
