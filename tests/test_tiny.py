import re

import pytest
import torch

from sightbeyond.config import Reading
from sightbeyond.embedded import shapesworld as sw
from sightbeyond.embedded.tiny import GRID, Practice, embed, encode, reading_practice, scene_grid, train_tokenizer

QUESTION_ANSWER = re.compile(r"Is there an? (\w+) in the image\?.*?(Yes|No), there", re.S)


def test_the_grid_lays_each_shape_over_its_cells_patches():
    scene = [sw.Shape("star", "red", 0), sw.Shape("circle", "blue", 3)]  # top left, bottom right
    assert scene_grid(scene, 2) == [("red", "star"), ("dark",), ("dark",), ("blue", "circle")]
    four = scene_grid(scene, 4)  # 2 x 2 patches per cell, row by row
    assert [i for i, slot in enumerate(four) if slot == ("red", "star")] == [0, 1, 4, 5]
    assert [i for i, slot in enumerate(four) if slot == ("blue", "circle")] == [10, 11, 14, 15]


def test_practice_answers_from_the_grid_where_the_image_goes():
    docs = reading_practice(Reading(scenes=300, captions=0.3, lookups=0.2, min_auc=0.95, attempts=1), side=2, template="v1", seed=3)
    assert docs == reading_practice(Reading(scenes=300, captions=0.3, lookups=0.2, min_auc=0.95, attempts=1), side=2, template="v1", seed=3)
    kinds = {"caption": 0, "lookup": 0, "questions": 0}
    for doc in docs:
        shown = {slot[1]: slot[0] for slot in doc.grid if slot != ("dark",)}
        assert GRID not in doc.before + doc.after
        if doc.after.endswith(" on a dark background .\n"):
            kinds["caption"] += 1
            assert {w for w in doc.after.replace(",", " ").split() if w in sw.SHAPES} == set(shown)
        elif "Is there" in doc.after:
            kinds["questions"] += 1
            assert doc.before.endswith("USER: ") and doc.after.startswith("\nIs there")  # v1, the grid as the image
            asked = QUESTION_ANSWER.findall(doc.after)
            assert sorted(k for k, _ in asked) == sorted(sw.SHAPES)  # every shape asked once
            assert all((answer == "Yes") == (kind in shown) for kind, answer in asked)
        else:
            kinds["lookup"] += 1
            pairs = doc.after.split()
            assert {pairs[i] for i in range(0, len(pairs), 2)} == set(sw.SHAPES)
            assert all((pairs[i + 1] == "yes") == (pairs[i] in shown) for i in range(0, len(pairs), 2))
    assert all(n > 30 for n in kinds.values()), kinds


def test_a_grid_position_holds_the_sum_of_its_words_and_only_what_follows_is_scored():
    doc = Practice("", [("red", "star"), ("dark",)], "a red star on a dark background .\n")
    tokenizer = train_tokenizer([doc.text()] * 20, vocab_size=300)
    ids, second, labels = encode(tokenizer, doc)
    red, star, dark = (tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in ("red", "star", "dark"))
    assert ids[1:3] == [red, dark] and second[1:3] == [star, -1]  # after the BOS
    assert labels[:3] == [-100] * 3 and all(t != -100 for t in labels[3:])
    table = torch.nn.Embedding(len(tokenizer), 8)
    model = type("M", (), {"get_input_embeddings": lambda self: table})()
    out = embed(model, torch.tensor([ids]), torch.tensor([second]))
    assert torch.allclose(out[0, 1], table.weight[red] + table.weight[star])
    assert torch.allclose(out[0, 2], table.weight[dark])


def test_reading_shares_must_fit_in_the_scenes():
    with pytest.raises(ValueError, match="more than all the scenes"):
        Reading(scenes=10, captions=0.7, lookups=0.5, min_auc=0.95, attempts=1)


def _fake_draws(monkeypatch, aucs: list[float]) -> list[int]:
    """Pretraining replaced by a stub that records its seed; the check replaced by the AUCs given, one per draw."""
    from sightbeyond.embedded import tiny

    seeds, results = [], iter(aucs)
    monkeypatch.setattr(tiny, "pretrain_llm", lambda cfg, tok, texts, practice, seed: seeds.append(seed) or f"model {seed}")
    monkeypatch.setattr(tiny, "presence_auc", lambda *args, **kwargs: next(results))
    return seeds


def test_a_draw_that_did_not_learn_to_read_is_retrained_from_the_next_seed(monkeypatch):
    from sightbeyond.config import load_params
    from sightbeyond.embedded.tiny import pretrain_reading_llm

    cfg = load_params().tiny_backbone
    seeds = _fake_draws(monkeypatch, [0.61, 0.99])
    model, reading = pretrain_reading_llm(cfg, None, [], [], "v1", side=2)
    assert seeds == [cfg.seed, cfg.seed + 1] and model == f"model {cfg.seed + 1}"
    assert reading == {"seed": cfg.seed + 1, "presence_auc": 0.99, "attempts": 2}


def test_a_backbone_that_never_learns_to_read_fails_the_build_by_name(monkeypatch):
    from sightbeyond.config import load_params
    from sightbeyond.embedded.tiny import pretrain_reading_llm
    from sightbeyond.io import TrainingFailed

    cfg = load_params().tiny_backbone
    seeds = _fake_draws(monkeypatch, [0.6] * cfg.reading.attempts)
    with pytest.raises(TrainingFailed, match=r"presence AUC 0\.600 < tiny_backbone\.reading\.min_auc"):
        pretrain_reading_llm(cfg, None, [], [], "v1", side=2)
    assert len(seeds) == cfg.reading.attempts


def test_without_a_required_auc_the_first_draw_is_kept_and_its_auc_recorded(monkeypatch):
    from sightbeyond.config import load_params
    from sightbeyond.embedded.tiny import pretrain_reading_llm

    cfg = load_params(overrides={"tiny_backbone.reading.min_auc": None}).tiny_backbone
    seeds = _fake_draws(monkeypatch, [0.52])
    model, reading = pretrain_reading_llm(cfg, None, [], [], "v1", side=2)
    assert seeds == [cfg.seed] and reading["presence_auc"] == 0.52
