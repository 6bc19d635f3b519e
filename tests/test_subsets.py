"""The per-type ablation sets: seeded, drawn from the right file, in the LLaVA layout `prepare` reads."""

from __future__ import annotations

import json

import pytest

from sightbeyond.config import ConfigError
from sightbeyond.data import subsets
from sightbeyond.data.prepare import instruct_file

FILES = {"conversation_30.json": 30, "detail_20.json": 20, "complex_reasoning_25.json": 25, "llava_instruct_75.json": 75}


@pytest.fixture
def instruct(tmp_path, monkeypatch):
    root = tmp_path / "instruct"
    root.mkdir()
    for name, n in FILES.items():
        kind = name.rsplit("_", 1)[0]
        records = [{"id": f"{kind}-{i}", "image": f"{i:012d}.jpg",
                    "conversations": [{"from": "human", "value": f"<image>\nQ{i}"}, {"from": "gpt", "value": f"A{i}"}]}
                   for i in range(n)]
        (root / name).write_text(json.dumps(records))
    monkeypatch.chdir(tmp_path)
    return root


def ids(path):
    return [r["id"] for r in json.loads(path.read_text())]


def test_each_set_is_drawn_from_its_file_seeded(params_for, instruct):
    params = params_for(**{"prepare.instruct_dir": str(instruct), "subsets.size": 10, "subsets.seed": 1})
    subsets.run(params)
    first = {name: ids(subsets.subset_file(name, 10)) for name in ("conversation", "detail", "reasoning", "random20k")}
    for name, source in {"conversation": "conversation", "detail": "detail", "reasoning": "complex_reasoning",
                         "random20k": "llava_instruct"}.items():
        assert len(first[name]) == len(set(first[name])) == 10
        assert all(i.startswith(source + "-") for i in first[name])
        assert [int(i.rsplit("-", 1)[1]) for i in first[name]] == sorted(int(i.rsplit("-", 1)[1]) for i in first[name])
    subsets.run(params)
    assert {name: ids(subsets.subset_file(name, 10)) for name in first} == first  # same seed, same sets
    subsets.run(params_for(**{"prepare.instruct_dir": str(instruct), "subsets.size": 10, "subsets.seed": 2}))
    assert ids(subsets.subset_file("random20k", 10)) != first["random20k"]
    assert instruct_file(params.model_copy(update={"data": "detail"})) == \
        subsets.subset_file("detail", 10)


def test_a_set_larger_than_its_file_is_refused_and_nothing_is_written(params_for, instruct):
    params = params_for(**{"prepare.instruct_dir": str(instruct), "subsets.size": 21})
    with pytest.raises(ConfigError, match=r"detail_20.json: 20 records, fewer than subsets.size=21"):
        subsets.run(params)
    assert not subsets.SUBSETS.exists()
