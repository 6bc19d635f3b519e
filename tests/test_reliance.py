"""Image reliance: the held-out loss with another record's image minus with the right one is zero for a model that
cannot see its image and positive for one that reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from sightbeyond.data.prepare import heldout_rows
from sightbeyond.io import ConfigError
from sightbeyond.model.llava import build_llava, load_processor, scale_projector_to_text
from sightbeyond.tasks.pope import deranged_images
from sightbeyond.tasks.reliance import RelianceProbe, blank_image, derangement

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40)}


def records(n_per_color: int) -> list[dict]:
    """One image of a solid colour each, captioned with its colour's name: only the image tells the caption."""
    return [{"id": f"{name}-{i}", "images": [Image.new("RGB", (32, 32), rgb)], "messages": [
                {"role": "user", "content": [{"type": "image", "text": None}]},
                {"role": "assistant", "content": [{"type": "text", "text": f"a {name} square"}]}]}
            for i in range(n_per_color) for name, rgb in COLORS.items()]


@pytest.fixture
def llava(params_for):
    params = params_for()
    processor = load_processor(params, template="plain")
    torch.manual_seed(0)
    return build_llava(params, processor.tokenizer), processor


def probe(processor, rows):
    collator = DataCollatorForVisionLanguageModeling(processor, max_length=64, assistant_only_loss=True)
    return RelianceProbe(rows, collator, processor.image_processor, batch_size=4, seed=0)


def test_derangement_moves_every_record_and_is_fixed_by_its_seed():
    for n in (2, 3, 10, 101):
        perm = derangement(n, seed=5)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
        assert perm == derangement(n, seed=5)
    assert derangement(50, seed=1) != derangement(50, seed=2)
    with pytest.raises(ValueError, match="two records"):
        derangement(1, seed=0)


def test_blank_image_is_zero_once_normalised(llava):
    _, processor = llava
    pixels = processor.image_processor(blank_image(processor.image_processor), return_tensors="pt").pixel_values
    assert pixels.abs().max() < 0.02  # the mean colour, rounded to 8 bits


def test_a_model_that_cannot_see_its_image_has_no_gap(llava):
    model, processor = llava
    with torch.no_grad():  # every image maps to the same image tokens: the projector's bias
        model.model.multi_modal_projector.linear.weight.zero_()
    result = probe(processor, records(2)).run(model.eval())
    metrics = result.metrics()
    assert metrics["reliance/loss_right"] > 0.5  # a random LLM: the captions are far from known
    assert metrics["reliance/gap"] == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(result.losses["right"], result.losses["deranged"], atol=1e-6)
    assert np.allclose(result.losses["right"], result.losses["blank"], atol=1e-6)


def test_a_model_that_reads_its_image_pays_for_another(llava):
    model, processor = llava
    model.model.vision_tower.requires_grad_(False)
    collator = DataCollatorForVisionLanguageModeling(processor, max_length=64, assistant_only_loss=True)
    train = collator([dict(r) for r in records(2)])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(80):  # the projector and the (random) LLM learn to name each image's colour
        loss = model(**train).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.3
    metrics = probe(processor, records(1)).run(model.eval()).metrics()  # records of their own, one per colour
    assert metrics["reliance/gap"] > 0.5, metrics
    assert metrics["reliance/loss_deranged"] > metrics["reliance/loss_right"] + 0.5


def test_projector_starts_at_the_text_embeddings_norm(llava):
    model, processor = llava
    pixels = processor.image_processor([r["images"][0] for r in records(2)], return_tensors="pt").pixel_values

    def image_tokens():
        with torch.no_grad():
            return torch.cat(list(model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                                                 vision_feature_select_strategy="default").pooler_output))

    before = image_tokens()
    factor = scale_projector_to_text(model, pixels)
    after = image_tokens()
    text = model.get_input_embeddings().weight.norm(dim=-1).mean()
    assert after.norm(dim=-1).mean().item() == pytest.approx(text.item(), rel=1e-4)
    assert torch.allclose(after, factor * before, atol=1e-6)  # a scale, not another projector


def test_pope_asks_each_images_questions_of_one_other_image(tmp_path):
    paths = [tmp_path / f"{i}.jpg" for i in (0, 0, 1, 1, 2, 2, 3)]
    other = deranged_images(paths, seed=0)
    assert all(a != b for a, b in zip(paths, other))
    assert {a: b for a, b in zip(paths, other)} == dict(zip(paths, other))  # the same image for every question of one
    assert sorted(set(other)) == sorted(set(paths))


def test_held_out_rows_are_seeded_and_never_trained_on():
    kept = heldout_rows(1000, 100, seed=3)
    assert kept == heldout_rows(1000, 100, seed=3) and len(set(kept)) == 100
    assert heldout_rows(1000, 0, seed=3) == []
    with pytest.raises(ConfigError, match="leaves none of the 10 records"):
        heldout_rows(10, 10, seed=0)
