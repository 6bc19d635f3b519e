"""Captioning: Karpathy's split files, the in-context prompt, and CIDEr equal to pycocoevalcap's own pipeline."""

from __future__ import annotations

import json
import shutil

import pytest

from sightbeyond.tasks.captions import caption_conversation, cider_scores, in_context_examples, read_karpathy

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer runs on Java")

REFERENCES = {
    "1.jpg": ["A dog runs on the grass.", "A brown dog running across a lawn.", "The dog is playing outside.",
              "A dog in a park.", "Dog running, (fast) on green grass!"],
    "2.jpg": ["Two cats sleep on a sofa.", "A pair of cats sleeping.", "Cats napping on the couch.",
              "Two kittens lie on a red sofa.", "There are two cats on the couch."],
    "3.jpg": ["A man rides a wave on a surfboard.", "A surfer on a big wave.", "Man surfing in the ocean.",
              "A person surfing a wave.", "Someone rides a surfboard on the sea."],
}
CELLS = {
    "clean": {"1.jpg": "A dog running on the grass.", "2.jpg": "No, there is not.", "3.jpg": "A man surfing a wave."},
    "awkward": {"1.jpg": "", "2.jpg": "Yes", "3.jpg": "There is no dog."},
    "unsure": {"1.jpg": "I can't tell", "2.jpg": "Two cats on a sofa.", "3.jpg": "A man isn't surfing."},
}


def reference_cider(refs, caps):
    """pycocoevalcap as COCOEvalCap runs it: each side through PTBTokenizer, then Cider."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": c}] for k, c in caps.items()})
    score, per_image = Cider().compute_score(gts, res)
    return 100 * score, dict(zip(gts, 100 * per_image))


@needs_java
def test_cider_equals_pycocoevalcap():
    ours = cider_scores(REFERENCES, CELLS)  # three cells through one tokenizer process
    for name, caps in CELLS.items():
        score, per_image = reference_cider(REFERENCES, caps)
        assert ours[name][0] == pytest.approx(score, rel=1e-12)
        assert ours[name][1] == pytest.approx(per_image, rel=1e-12)
    assert ours["clean"][0] > ours["unsure"][0] > 0
    assert ours["awkward"][1]["1.jpg"] == 0  # an empty caption scores nothing


@needs_java
def test_a_carriage_return_cannot_shift_later_captions():
    # Java would end the line at "\r" and every later caption would be scored against the wrong image
    broken = {"1.jpg": "A dog\rruns on the grass.", "2.jpg": "Two cats on a sofa.", "3.jpg": "A man surfing a wave."}
    fixed = dict(broken, **{"1.jpg": "A dog runs on the grass."})
    ours = cider_scores(REFERENCES, {"broken": broken, "fixed": fixed})
    assert ours["broken"] == ours["fixed"]


def test_captions_must_cover_the_referenced_images():
    with pytest.raises(ValueError, match=r"clean: captions do not match.*missing \['3.jpg'\].*extra \['4.jpg'\]"):
        cider_scores(REFERENCES, {"clean": {"1.jpg": "a", "2.jpg": "b", "4.jpg": "c"}})


def write_karpathy(path, images):
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))


def test_karpathy_layout(tmp_path):
    write_karpathy(tmp_path / "dataset_coco.json", [
        {"filepath": "val2014", "filename": "COCO_val2014_1.jpg", "split": "test",
         "sentences": [{"raw": "A dog. "}, {"raw": "A brown dog."}]},
        {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "split": "val", "sentences": [{"raw": "Unused."}]},
        {"filepath": "train2014", "filename": "COCO_train2014_3.jpg", "split": "train", "sentences": [{"raw": "A cat."}]},
        {"filepath": "val2014", "filename": "COCO_val2014_4.jpg", "split": "restval", "sentences": [{"raw": "A man."}]},
    ])
    test, train = read_karpathy(tmp_path / "dataset_coco.json", tmp_path / "coco")
    assert [(t.key, t.path, t.references) for t in test] == [
        ("COCO_val2014_1.jpg", tmp_path / "coco/val2014/COCO_val2014_1.jpg", ("A dog.", "A brown dog."))]
    assert train == ["A cat.", "A man."]
    # Flickr30k's file has no filepath: images lie directly in the folder
    write_karpathy(tmp_path / "dataset_flickr30k.json", [{"filename": "9.jpg", "split": "test", "sentences": [{"raw": "x"}]}])
    assert read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "f")[0][0].path == tmp_path / "f/9.jpg"


def test_karpathy_errors(tmp_path):
    write_karpathy(tmp_path / "d.json", [{"filename": "1.jpg", "split": "train", "sentences": [{"raw": "x"}]}])
    with pytest.raises(ValueError, match="no images in split 'test'"):
        read_karpathy(tmp_path / "d.json", tmp_path)
    write_karpathy(tmp_path / "d.json", [{"filename": "1.jpg", "split": "test", "sentences": []}])
    with pytest.raises(ValueError, match="no reference captions"):
        read_karpathy(tmp_path / "d.json", tmp_path)
    (tmp_path / "d.json").write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="not a Karpathy split file"):
        read_karpathy(tmp_path / "d.json", tmp_path)


def test_in_context_examples_are_text_only_and_seeded():
    pool = [f"caption {i}" for i in range(50)]
    assert in_context_examples(pool, 3, seed=42) == in_context_examples(pool, 3, seed=42)
    assert in_context_examples(pool, 3, seed=42) != in_context_examples(pool, 3, seed=43)
    with pytest.raises(ValueError, match="3 in-context examples asked"):
        in_context_examples(pool[:2], 3, seed=42)
    conv = caption_conversation("Describe.", ["a", "b", "c"])
    assert [m["role"] for m in conv] == ["user", "assistant"] * 3 + ["user"]
    assert [p["type"] for m in conv[:-1] for p in m["content"]] == ["text"] * 6  # no image before the last turn
    assert conv[-1]["content"] == [{"type": "image"}, {"type": "text", "text": "Describe."}]
