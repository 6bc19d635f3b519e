"""The odd inputs a lab meets: each one accepted and read right, or refused in one line (file, line or record, reason)
by the one error type the CLI turns into exit 2, before a model loads."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from sightbeyond.cli import main
from sightbeyond.data.llava_format import read_llava_file
from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
from sightbeyond.io import BadInput, as_rgb
from sightbeyond.tasks.nlp import check_files

TRUTHFULQA = ("truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen")


def cli(root, monkeypatch, capsys, *argv) -> tuple[int, list[str]]:
    """`sightbeyond *argv` in this process, in project `root`: its exit code and its error lines."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("SIGHTBEYOND_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if " error: " in line]


# --- benchmark files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["Incorrect Answers", "Correct Answers"])
def test_a_truthfulqa_answer_cell_of_only_separators_is_refused_by_all_three_tasks(tmp_path, column):
    """Today `truthfulqa_gen` accepted it, generated every answer, then died inside lm-eval (max of an empty array)."""
    paths = write_nlp_fixtures(tmp_path, seed=0, n_truthfulqa=4, n_ethics=4)
    path = paths["truthfulqa/TruthfulQA.csv"]
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    rows[2][rows[0].index(column)] = " ; ;"
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    for task in TRUTHFULQA:
        with pytest.raises(BadInput, match=rf"{path}: row 3: '{column}' holds no answer: ' ; ;'"):
            check_files([task], "local", tmp_path)


@pytest.fixture
def pope_project(tiny_project, tmp_path):
    """A project whose eval_mm reads one POPE split from `pope/`, its one image in `images/`."""
    pope, images = tmp_path / "pope", tmp_path / "images"
    pope.mkdir()
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "a.jpg")
    rows = [{"question_id": i, "image": "a.jpg", "text": "Is there a circle in the image?", "label": label}
            for i, label in enumerate(("yes", "no"), 1)]
    (pope / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tiny_project(**{"eval_mm.benchmarks": ["pope"], "eval_mm.text_benchmarks": ["pope"],
                           "eval_mm.pope_dir": str(pope), "eval_mm.pope_images": str(images), "eval_mm.splits": ["random"]})
    return root, pope / "coco_pope_random.json"


def test_a_pope_file_with_a_cut_line_stops_eval_mm_in_one_line(pope_project, monkeypatch, capsys):
    root, questions = pope_project
    questions.write_text(questions.read_text() + '{"question_id": 3, "image": "a.jpg", "te')
    code, [line] = cli(root, monkeypatch, capsys, "eval_mm", "--tuning", "lora", "--modality", "text")
    assert code == 2 and f"{questions}: line 3: unparsable JSON" in line


def test_a_missing_pope_image_is_named_with_the_question_that_asks_for_it(pope_project, monkeypatch, capsys):
    root, questions = pope_project
    questions.write_text(questions.read_text().replace('"image": "a.jpg", "text": "Is there a circle in the image?", '
                                                       '"label": "no"', '"image": "gone.jpg", "text": "Is it?", "label": "no"'))
    code, [line] = cli(root, monkeypatch, capsys, "eval_mm", "--tuning", "lora", "--modality", "text")
    assert code == 2 and f"{questions}: line 2: image {questions.parent.parent / 'images/gone.jpg'} not found" in line


def test_an_mme_answer_neither_yes_nor_no_stops_eval_mm_in_one_line(tiny_project, tmp_path, monkeypatch, capsys):
    from sightbeyond.tasks.mme import COGNITION, PERCEPTION

    mme = tmp_path / "mme" / "count"
    mme.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(mme / "1.png")
    (mme / "1.txt").write_text("How many circles? Please answer yes or no.\tYes\nAre there two?\tMaybe\n")
    root = tiny_project(**{"eval_mm.benchmarks": ["mme"], "eval_mm.text_benchmarks": ["mme"], "eval_mm.mme_dir": str(mme.parent),
                           "eval_mm.mme_exclude": [t for t in PERCEPTION + COGNITION if t != "count"]})
    code, [line] = cli(root, monkeypatch, capsys, "eval_mm", "--tuning", "lora", "--modality", "text")
    assert code == 2 and f"{mme / '1.txt'}: line 2: expected 'question<TAB>Yes|No', got 'Are there two?\\tMaybe'" in line


# --- images ------------------------------------------------------------------------------------------------------

GREY_16 = np.array([[0, 30000], [65535, 1000]], dtype=np.uint16)
MODES = {  # what the real datasets hold, as PIL opens them; each accepted, in 8-bit RGB
    "RGB": lambda: Image.new("RGB", (4, 4), (200, 10, 10)),
    "RGBA": lambda: Image.new("RGBA", (4, 4), (200, 10, 10, 128)),
    "L": lambda: Image.new("L", (4, 4), 77),
    "P": lambda: Image.new("RGB", (4, 4), (200, 10, 10)).convert("P"),
    "CMYK": lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)),
    "1x1": lambda: Image.new("RGB", (1, 1), (1, 2, 3)),
    "I;16": lambda: Image.fromarray(GREY_16),
}
SUFFIX = {"CMYK": "jpg"}  # PNG holds no CMYK


def saved(mode: str, folder) -> str:
    name = f"{mode.replace(';', '')}.{SUFFIX.get(mode, 'png')}"
    MODES[mode]().save(folder / name)
    return name


def llava_file(folder, *images: str):
    path = folder / "records.json"
    path.write_text(json.dumps([{"id": f"r-{image}", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "Shapes."}]}
        for image in images]))
    return path


@pytest.mark.parametrize("mode", MODES)
def test_prepare_accepts_each_mode_and_the_model_sees_it_in_8_bit_rgb(tmp_path, mode, tiny_backbone):
    from datasets import load_from_disk
    from transformers import CLIPImageProcessor

    from sightbeyond.data.prepare import save

    name = saved(mode, tmp_path)
    assert Image.open(tmp_path / name).mode == {"1x1": "RGB"}.get(mode, mode)
    source = llava_file(tmp_path, name)
    save(lambda: read_llava_file(source, tmp_path, on_bad_record="error", with_image=True), tmp_path / "out", with_image=True)
    [image] = load_from_disk(str(tmp_path / "out"))["train"][0]["images"]
    rgb = as_rgb(image, name)
    assert rgb.mode == "RGB" and rgb.size == MODES[mode]().size
    pixels = CLIPImageProcessor.from_pretrained(tiny_backbone / "clip")(images=rgb, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 32, 32)
    if mode == "I;16":  # scaled from 16 bits, not clipped to white: the grey levels the picture has
        assert [rgb.getpixel(xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 117, 255, 4]


def test_a_float_image_is_refused_naming_the_record_and_the_mode(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    source = llava_file(tmp_path, "float.tif")
    with pytest.raises(BadInput, match=r"records\.json: record r-float\.tif: image .*float\.tif: mode F \(32-bit float\)"):
        list(read_llava_file(source, tmp_path, on_bad_record="error", with_image=True))


@pytest.mark.parametrize("mode", MODES)
def test_benchmark_images_of_each_mode_are_read_in_8_bit_rgb(tmp_path, mode):
    from sightbeyond.evaluation.mm_stage import image_problem, load_image

    path = tmp_path / saved(mode, tmp_path)
    assert image_problem(path) is None
    image = load_image(path)
    assert image.mode == "RGB" and image.size == MODES[mode]().size
    if mode == "I;16":
        assert image.getpixel((1, 0)) == (117, 117, 117)


def test_a_float_benchmark_image_stops_before_the_model_loads(pope_project, monkeypatch, capsys):
    root, questions = pope_project
    images = questions.parent.parent / "images"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(images / "f.tif")
    questions.write_text(questions.read_text().replace('"a.jpg", "text": "Is there a circle in the image?", "label": "no"',
                                                       '"f.tif", "text": "Is it?", "label": "no"'))
    code, [line] = cli(root, monkeypatch, capsys, "eval_mm", "--tuning", "lora", "--modality", "text")
    assert code == 2 and f"{questions}: line 2: image {images / 'f.tif'}: mode F (32-bit float)" in line


# --- settings -----------------------------------------------------------------------------------------------------


def test_a_yaml_syntax_error_in_params_names_the_file_line_and_column(tiny_project, monkeypatch, capsys):
    root = tiny_project()
    text = (root / "params.yaml").read_text().splitlines()
    text.insert(1, "broken: [unclosed")
    (root / "params.yaml").write_text("\n".join(text) + "\n")
    code, [line] = cli(root, monkeypatch, capsys, "check")
    assert code == 2 and f"{root / 'params.yaml'}: not valid YAML: line 3, column 5: expected ',' or ']', but got ':' " \
                         "(while parsing a flow sequence at line 2, column 9)" in line
    assert "<unicode string>" not in line


@pytest.mark.parametrize("override, says", [
    ("stage2.save_steps=[1, 2", "-S 'stage2.save_steps=[1, 2': the value '[1, 2' is not valid YAML: column 6: expected "
                                "',' or ']', but got '<stream end>' (while parsing a flow sequence at column 1)"),
    ("backbone.llm=x", "-S backbone.llm=...: backbone is a value ('tiny'), not a section"),
    ("stage2..x=1", "-S stage2..x=...: the key has an empty part"),
    ("=1", "-S '=1': expected KEY=VALUE"),
])
def test_a_bad_override_names_its_own_text(tiny_project, monkeypatch, capsys, override, says):
    code, [line] = cli(tiny_project(), monkeypatch, capsys, "-S", override, "check")
    assert code == 2 and says in line


# --- outputs ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only(folder):
    """`folder` unwritable, for root too (the immutable attribute) where chattr works, else by its mode."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("root, and chattr cannot make a folder read-only on this file system")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_a_read_only_prepared_folder_is_named_before_a_run_starts(tiny_project, monkeypatch, capsys):
    root = tiny_project()
    with read_only(root / "data/prepared"):
        code, [line] = cli(root, monkeypatch, capsys, "prepare", "--split", "stage1")
    assert code == 2 and "data/prepared: cannot write outputs there (" in line and "[Errno" not in line
    assert not (root / "mlflow.db").exists()  # no run was started


def test_reading_bad_inputs_changes_no_file(tmp_path):
    """A refused input leaves the folder it was read from as it was (a reader writes nothing beside its input)."""
    source = llava_file(tmp_path, "missing.png")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(BadInput):
        list(read_llava_file(source, tmp_path, on_bad_record="error", with_image=True))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

