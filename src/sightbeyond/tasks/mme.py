"""MME (Fu et al., 2023): the release layout, and the scoring of its `eval_tool/calculation.py`.

Release: one folder per subtask, either with `images/` and `questions_answers_YN/` inside, or with each image beside
its `.txt`; a `.txt` holds the image's two `question<TAB>Yes|No` lines. The eval tool scores one `<subtask>.txt` per
subtask of `image<TAB>question<TAB>truth<TAB>prediction` lines, consecutive lines pairing up into an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sightbeyond.io import MalformedFile, undecodable
from sightbeyond.tasks.predictions import qa_conversation

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


@dataclass(frozen=True)
class Question:
    subtask: str
    image: str          # the image's file name, as the eval tool's files name it
    path: Path
    question: str
    truth: str          # "Yes" | "No", as the release writes it
    asked: str = ""     # the file and line that ask it


def read_mme(root: Path, subtasks: list[str]) -> list[Question]:
    """Every question of `subtasks`, two per image, images in file-name order."""
    questions = []
    for subtask in subtasks:
        folder = root / subtask
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: MME subtask folder missing")
        image_dir, qa_dir = (folder / "images", folder / "questions_answers_YN") if (folder / "images").is_dir() else (folder, folder)
        texts = sorted(qa_dir.glob("*.txt"))
        if not texts:
            raise FileNotFoundError(f"{qa_dir}: no question files")
        for text in texts:
            image = next((image_dir / (text.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (text.stem + s)).is_file()), None)
            if image is None:
                raise FileNotFoundError(f"{text}: no image {text.stem}.jpg/.png in {image_dir}")
            content = text.read_text(encoding="utf-8", errors="surrogateescape")
            if reason := undecodable(content):
                raise MalformedFile(text, "text", reason)
            lines = [(n, line.strip()) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
            if len(lines) != 2:
                raise MalformedFile(text, "file", f"MME asks two questions per image, found {len(lines)}")
            for n, line in lines:
                fields = line.split("\t")
                if len(fields) != 2 or fields[1].strip().lower() not in ("yes", "no"):
                    raise MalformedFile(text, f"line {n}", f"expected 'question<TAB>Yes|No', got {line[:200]!r}")
                questions.append(Question(subtask, image.name, image, fields[0], fields[1].strip(), f"{text}: line {n}"))
    return questions


def parse_answer(text: str) -> str:
    """Lower-cased; "yes"/"no" exactly, else whichever of them the first four characters hold, else "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def one_field(answer: str) -> str:
    """The answer as the eval tool's results file can hold it: a tab or line break would split its columns."""
    return " ".join(answer.replace("\t", " ").splitlines())


def eval_tool_line(q: Question, answer: str) -> str:
    return f"{q.image}\t{q.question}\t{q.truth}\t{one_field(answer)}"


def score_subtask(lines: list[str]) -> dict[str, float]:
    """acc over questions, acc+ over images with both questions right, score = 100 (acc + acc+).

    The eval tool pairs consecutive lines into an image without checking the names: lines out of order would be
    mis-scored, so they stop here.
    """
    if not lines or len(lines) % 2:
        raise ValueError(f"MME results hold {len(lines)} lines; the eval tool needs two per image")
    rows = []
    for n, line in enumerate(lines, 1):
        fields = line.rstrip("\n").split("\t")
        if len(fields) != 4:
            raise ValueError(f"MME results line {n}: expected image, question, truth and prediction, got {line!r}")
        if fields[2].lower() not in ("yes", "no"):
            raise ValueError(f"MME results line {n}: truth {fields[2]!r} is not yes or no")
        rows.append(fields)
    correct = both = 0
    for i in range(0, len(rows), 2):
        first, second = rows[i], rows[i + 1]
        if first[0] != second[0]:
            raise ValueError(f"MME results lines {i + 1} and {i + 2} are for different images ({first[0]}, {second[0]}): "
                             "the eval tool pairs consecutive lines, so the predictions are out of order")
        right = [parse_answer(r[3]) == r[2].lower() for r in (first, second)]
        correct += sum(right)
        both += all(right)
    acc, acc_plus = correct / len(rows), both / (len(rows) // 2)
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus)}


def mme_metrics(results: dict[str, list[str]]) -> dict[str, float]:
    """`mme/<subtask>` for each subtask given, and the perception and cognition sums over those."""
    unknown = set(results) - set(PERCEPTION) - set(COGNITION)
    if unknown:
        raise ValueError(f"not MME subtasks: {sorted(unknown)}")
    scores = {subtask: score_subtask(lines)["score"] for subtask, lines in results.items()}
    answers = [line.rstrip("\n").split("\t")[3] for lines in results.values() for line in lines]
    return {
        "mme/perception": sum(s for t, s in scores.items() if t in PERCEPTION),
        "mme/cognition": sum(s for t, s in scores.items() if t in COGNITION),
        **{f"mme/{t}": s for t, s in scores.items()},
        # the parser's "other": neither yes nor no, so wrong answers and unreadable ones can be told apart
        "mme/unreadable": sum(parse_answer(a) == "other" for a in answers) / len(answers),
    }


# The eval_mm stage's family: `read` before the model loads (the questions, their images), `evaluate` with its
# generator `ask`; `cfg` is params.eval_mm.
def inputs(cfg) -> list[Path]:
    return [cfg.mme_dir]


def read(cfg) -> tuple[list[Question], dict[Path, str]]:
    questions = read_mme(cfg.mme_dir, [t for t in PERCEPTION + COGNITION if t not in cfg.mme_exclude])
    return questions, {q.path: q.asked for q in questions}


def evaluate(ask, questions: list[Question], cfg) -> dict[str, float]:
    import mlflow

    answers = ask([qa_conversation(q.question) for q in questions], [q.path for q in questions],
                  max_new_tokens=cfg.max_new_tokens, desc="MME")
    results: dict[str, list[str]] = {}
    for q, a in zip(questions, answers):
        results.setdefault(q.subtask, []).append(eval_tool_line(q, a))
    for subtask, lines in results.items():  # what the official eval_tool/calculation.py reads
        mlflow.log_text("".join(line + "\n" for line in lines), f"mme_eval_tool/{subtask}.txt")
    parsed = [parse_answer(one_field(a)) for a in answers]
    mlflow.log_table({"subtask": [q.subtask for q in questions], "image": [q.image for q in questions],
                      "question": [q.question for q in questions], "truth": [q.truth for q in questions],
                      "answer": answers, "parsed": parsed,
                      "correct": [p == q.truth.lower() for p, q in zip(parsed, questions)]},
                     artifact_file="mme_predictions.json")
    return mme_metrics(results)
