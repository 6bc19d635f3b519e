"""Bad LLaVA-layout records stop `prepare` with the file, the record id and the reason; or are skipped and counted."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sightbeyond.data.llava_format import BadRecord, ReadCounts, iter_records, read_llava_file
from sightbeyond.io import BadInput


def record(rid: str, image: str = "ok.jpg", human: str = "<image>\nWhat is this?", gpt: str | None = "A red circle.") -> dict:
    convs = [{"from": "human", "value": human}] + ([{"from": "gpt", "value": gpt}] if gpt is not None else [])
    return {"id": rid, "image": image, "conversations": convs}


@pytest.fixture
def images(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "ok.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path


BAD = {
    "missing image": (record("r-missing", image="nowhere.jpg"), "not found"),
    "unreadable image": (record("r-broken", image="broken.jpg"), "unreadable"),
    "no assistant turn": (record("r-noanswer", gpt=None), "no assistant turn"),
    "no image token": (record("r-noimage", human="What is this?"), "appears 0 times"),
    "two image tokens": (record("r-twice", human="<image>\nWhat is this? <image>"), "appears 2 times"),
}


@pytest.mark.parametrize("kind", BAD)
def test_each_bad_record_names_file_record_and_reason(images, kind):
    bad, reason = BAD[kind]
    path = images / "instruct.json"
    path.write_text(json.dumps([record("r-good"), bad]))
    with pytest.raises(BadRecord) as err:
        list(read_llava_file(path, images, on_bad_record="error", with_image=True))
    message = str(err.value)
    assert str(path) in message and bad["id"] in message and reason in message


def test_unparsable_json_names_the_record_where_it_breaks(images):
    path = images / "instruct.json"
    path.write_text("[" + json.dumps(record("r-good")) + ', {"id": "r-bad", "image": }]')
    with pytest.raises(BadRecord, match=r"instruct.json: record #1 \(after id r-good\): unparsable JSON"):
        list(read_llava_file(path, images, on_bad_record="error", with_image=True))


@pytest.mark.parametrize("rid", ["line\nbreak", "tab\there"])
def test_an_id_with_a_control_character_still_gives_a_one_line_error(images, rid):
    path = images / "instruct.json"
    path.write_text(json.dumps([record(rid, gpt=None)]))
    with pytest.raises(BadRecord) as err:
        list(read_llava_file(path, images, on_bad_record="error", with_image=True))
    assert "\n" not in str(err.value) and repr(rid)[1:-1] in str(err.value)


def test_skip_keeps_good_records_and_counts_the_rest(images):
    path = images / "instruct.json"
    path.write_text(json.dumps([record("r-good")] + [bad for bad, _ in BAD.values()] + [record("r-good2")]))
    report = ReadCounts()
    rows = list(read_llava_file(path, images, on_bad_record="skip", with_image=True, report=report))
    assert [r["id"] for r in rows] == ["r-good", "r-good2"]
    assert report.as_dict()["skipped"] == len(BAD) and report.read == len(BAD) + 2
    assert set(report.skipped) == {"missing image", "unreadable image", "no assistant turn", "image token count"}


def test_text_only_variant_drops_the_image_but_keeps_the_same_records(images):
    path = images / "instruct.json"
    path.write_text(json.dumps([record("r-good", human="What is this?\n<image>")]))
    [with_image] = list(read_llava_file(path, images, on_bad_record="error", with_image=True))
    [text_only] = list(read_llava_file(path, images, on_bad_record="error", with_image=False))
    assert with_image["messages"][0]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "What is this?"}]
    assert text_only["messages"][0]["content"] == "What is this?" and "images" not in text_only


@pytest.mark.parametrize("chunk_chars", [5, 64, 1 << 20])
def test_chunked_reading_gives_every_record_whatever_the_chunk_size(tmp_path, chunk_chars):
    records = [record(f"r-{i}", human=f"<image>\nQuestion {i} with unicode é 图 {'x' * i}?") for i in range(40)]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    assert list(iter_records(path, chunk_chars=chunk_chars)) == records


@pytest.mark.parametrize("chunk_chars", [5, 1 << 20])
def test_a_syntax_error_is_named_whatever_the_chunk_size(tmp_path, chunk_chars):
    path = tmp_path / "chat.json"
    path.write_text("[" + json.dumps(record("r-good")) + ', {"id": "r-bad", "image": }, ' + json.dumps(record("r-3")) + "]")
    with pytest.raises(BadRecord, match=r"record #1 \(after id r-good\): unparsable JSON"):
        list(iter_records(path, chunk_chars=chunk_chars))


def test_a_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([record("r-1"), record("r-2")])[:-30])
    with pytest.raises(BadRecord, match=r"record #1 \(after id r-1\)"):
        list(iter_records(path, chunk_chars=16))


def test_bytes_that_are_not_utf8_name_their_record_and_can_be_skipped(images):
    path = images / "instruct.json"
    good, bad = json.dumps(record("r-good")).encode(), json.dumps(record("r-latin1", gpt="Un cafe.")).encode()
    path.write_bytes(b"[" + good + b", " + bad.replace(b"cafe", b"caf\xe9") + b", " + good.replace(b"r-good", b"r-good2") + b"]")
    with pytest.raises(BadRecord, match=r"instruct.json: record #1: not UTF-8 text \(byte 0xe9\)"):
        list(read_llava_file(path, images, on_bad_record="error", with_image=True))
    report = ReadCounts()
    rows = list(read_llava_file(path, images, on_bad_record="skip", with_image=True, report=report))
    assert [r["id"] for r in rows] == ["r-good", "r-good2"] and dict(report.skipped) == {"not UTF-8": 1}


def test_text_after_the_closing_bracket_is_an_error(tmp_path):
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps([record("r-good")]) + '\n{"id": "stray"}\n')
    with pytest.raises(BadRecord, match=r"record #1: text after the array's closing '\]'"):
        list(iter_records(path))
    path.write_text(json.dumps([record("r-good")]) + "\n\n")  # whitespace after it is fine
    assert len(list(iter_records(path))) == 1


def test_skipping_every_record_says_so_with_the_counts(images):
    path = images / "instruct.json"
    path.write_text(json.dumps([record("r-missing", image="nowhere.jpg"), record("r-noanswer", gpt=None)]))
    with pytest.raises(BadInput, match=r"instruct\.json: no usable record of 2 read; every one skipped: .*'missing image': 1") as err:
        list(read_llava_file(path, images, on_bad_record="skip", with_image=True))
    assert "record (all)" not in str(err.value)  # no record is called "(all)"

    report = ReadCounts()
    path.write_text(json.dumps([record("r-missing", image="nowhere.jpg"), record("r-noanswer", gpt=None), record("r-ok")]))
    assert [r["id"] for r in read_llava_file(path, images, on_bad_record="skip", with_image=True, report=report)] == ["r-ok"]
    # the skipped records are named, by reason, for the user to find and fix
    assert report.as_dict()["skipped_ids"] == {"missing image": ["r-missing"], "no assistant turn": ["r-noanswer"]}
