"""ShapesWorld's evaluation images are never training images: POPE, MME, the caption splits and Unicorn draw scenes
of their own, so a score measures what a model learnt, not what it saw."""

from __future__ import annotations

import hashlib
import json

from sightbeyond.config import Synth
from sightbeyond.embedded.shapesworld import generate

SMALL = Synth(seed=0, image_size=64, max_shapes=3, stage1_pairs=120, conversation=40, detail=20, complex_reasoning=20,
              pope_images=20, nlp_fixture_rows=8, mme_images=3, caption_images=10, unicorn_images=10)


def digests(paths) -> dict[str, str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p) for p in paths}


def test_no_evaluation_image_is_a_training_image(tmp_path):
    out = tmp_path / "shapesworld"
    generate(SMALL, out)
    training = digests([*(out / "cc3m/images").iterdir(), *(out / "coco/train2017").iterdir()])
    pope = [out / "coco/val2014" / json.loads(line)["image"]
            for f in (out / "pope").glob("*.json") for line in f.read_text().splitlines()]
    evaluation = digests([*pope, *(p for p in (out / "mme").rglob("*") if p.suffix in (".jpg", ".png")),
                          *(out / "coco/val2014").iterdir(), *(out / "coco/train2014").iterdir(),
                          *(out / "flickr30k/flickr30k-images").iterdir(),
                          *(p for p in (out / "unicorn").rglob("*") if p.suffix in (".jpg", ".png"))])
    assert len(training) == SMALL.stage1_pairs + SMALL.conversation + SMALL.detail + SMALL.complex_reasoning
    assert len(evaluation) > SMALL.pope_images + 4 * SMALL.caption_images  # every benchmark's images were found
    assert not training.keys() & evaluation.keys(), [evaluation[d] for d in training.keys() & evaluation.keys()][:5]
    # nor are the records a question about an image is asked of: the records' images are training images
    records = [r for f in (out / "instruct").glob("*.json") for r in json.loads(f.read_text())]
    assert {r["image"] for r in records} <= {p.name for p in (out / "coco/train2017").iterdir()}


def test_a_conversations_presence_answers_are_not_readable_from_each_other():
    import random
    from collections import Counter

    from sightbeyond.embedded import shapesworld as sw

    rng, pairs = random.Random(0), Counter()
    for _ in range(400):
        turns = sw.conversation(sw.sample_scene(rng, rng.randint(2, 3)), rng)
        pairs[tuple(answer.split(",")[0] for _, answer in turns[:2])] += 1
    # one present and one absent shape, always, would let the second answer be the first's opposite
    assert set(pairs) == {("Yes", "No"), ("No", "Yes"), ("Yes", "Yes"), ("No", "No")}
    assert min(pairs.values()) > 60
