"""The paper's Tables 1, 3, 4 and 5 rebuilt from MLflow runs, in the paper's shape, with the paper's values beside.

Rows are the paper's (its model names mapped to `backbones` in params.yaml), then any other backbone or tuning the
runs hold; a row or value without a run shows "—". Each value is in the paper's units; a tuned model's delta
against its base LLM (Tables 1, 3) or against clean COCO (Table 5, in percent) carries its 95% bootstrap interval
and significance stars, from the runs' per-document results; "CI n/a" where a run logged none.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from sightbeyond.layout import NONE
from sightbeyond.report.reading import Cell, Results
from sightbeyond.report.stats import Bootstrap, Comparison, Estimate, relative_change, stars

PAPER = Path(__file__).parent / "paper"
MISSING = "—"

# the paper's model names -> params.yaml's backbones
BACKBONES = {"LLaMA": "llama7b", "Vicuna": "vicuna7b", "LLaMA-3B": "openllama3b", "Alpaca-3B": "openalpaca3b",
             "LLaMA2": "llama2", "LLaMA2-chat": "llama2chat", "Vicuna-v1.5-7B": "vicuna15_7b",
             "Vicuna-v1.5-13B": "vicuna15_13b"}
NAMES = {backbone: name for name, backbone in BACKBONES.items()}


def scale(metric: str) -> float:
    """Ours -> the paper's units: accuracies are logged as fractions; MME, CIDEr and SQuAD's F1 already in points;
    the reliance gap (not the paper's) in nats per token."""
    plain = metric.startswith(("mme/", "reliance/")) or metric.endswith("/cider") or metric == "squadv2/f1"
    return 1.0 if plain else 100.0


def decimals(metric: str) -> int:
    return 3 if metric.startswith("reliance/") else 1  # a gap of a few hundredths of a nat is not 0.1


@dataclass(frozen=True)
class Column:
    header: str                    # the paper's
    metrics: tuple[str, ...]       # ours, one per " / "-separated value of the paper's cell
    against: str | None = None     # "base": the base LLM's same metric; another metric: the same model's (Table 5)


@dataclass(frozen=True)
class Spec:
    name: str
    file: str                      # under paper/
    caption: str
    stage: str                     # the runs its tuned rows read
    columns: tuple[Column, ...]
    percent: bool                  # the paper writes values with "%"


SPECS = {s.name: s for s in (
    Spec("table1", "table1_alignment.tsv",
         "Table 1: Ethics and TruthfulQA, base LLMs and their visual-instruction-tuned LLMs (delta against the base)",
         "eval_nlp", (
             Column("Ethics Acc.", ("ethics/acc",), "base"),
             Column("TruthfulQA-gen Rouge Acc.", ("truthfulqa_gen/rougeL_acc",), "base"),
             Column("TruthfulQA-mc1 Acc.", ("truthfulqa_mc1/acc",), "base"),
             Column("TruthfulQA-mc2 Acc.", ("truthfulqa_mc2/acc",), "base")), percent=True),
    Spec("table3", "table3_nlp_capabilities.tsv", "Table 3: standard NLP benchmarks (delta against the base)",
         "eval_nlp", (
        Column("MMLU (Acc.)", ("mmlu/acc",), "base"),
        Column("GSM8K (Acc.)", ("gsm8k/exact_match",), "base"),
        Column("MathQA (Acc.)", ("mathqa/acc",), "base"),
        Column("sQuAD (F1.)", ("squadv2/f1",), "base"),
        Column("BoolQ (Acc.)", ("boolq/acc",), "base")), percent=True),
    Spec("table4", "table4_multimodal.tsv", "Table 4: multimodal benchmarks of the image-tuned models", "eval_mm", (
        Column("Unicorn (oodcv / sketch)", ("unicorn_oodcv/acc", "unicorn_sketch/acc")),
        Column("MME <sup>CS</sup>", ("mme/cognition",)),
        Column("MME <sup>PS</sup>", ("mme/perception",)),
        Column("COCO", ("coco/cider",)),
        Column("Flickr30k", ("flickr30k/cider",)),
        Column("POPE (R / A / P)", ("pope_random/acc", "pope_adversarial/acc", "pope_popular/acc")),
        # not in the paper: whether the model reads its image at all (tables/reliance.md)
        Column("Image reliance gap (nats/token)", ("reliance/gap",))), percent=False),
    Spec("table5", "table5_coco_corrupted.tsv",
         "Table 5: COCO captioning with corrupted images (COCO-C: delta in percent of clean COCO)", "eval_mm", (
             Column("COCO (CIDEr)", ("coco/cider",)),
             Column("COCO-C (CIDEr)", ("coco_c/cider",), "coco/cider")), percent=False),
)}


@dataclass(frozen=True)
class Row:
    label: str
    backbone: str
    tuning: str                    # none: the base LLM


@dataclass
class Entry:
    """One of our values in a table, in the paper's units."""

    row: Row
    metric: str
    cell: Cell
    value: float | None
    estimate: Estimate | None            # the value's interval
    paper: str                           # the paper's cell, as published ("" where it has none)
    delta_unit: str                      # "%" where the paper writes one: points of a percentage, or percent of COCO
    against: str = ""                    # what the delta is against
    delta: float | None = None
    comparison: Comparison | None = None  # the delta's interval and test
    selected_on: str | None = None       # stage2.best_metric chose the checkpoint: on "holdout" | "reported documents"
    no_delta: str = ""                   # why there is no delta although the run compared with exists


# how a row's checkpoint was chosen, marked after its label (the footnote says what the marks mean)
SELECTION_MARKS = {"holdout": "†", "reported documents": "‡"}


@dataclass
class Table:
    spec: Spec
    rows: list[Row]
    entries: dict[tuple[Row, str], Entry]          # (row, metric)
    paper: dict[tuple[Row, str], str]              # (row, column header) -> the paper's cell


def read_paper(spec: Spec) -> tuple[list[Row], dict[tuple[Row, str], str]]:
    lines = [line.split("\t") for line in (PAPER / spec.file).read_text().splitlines() if line.strip()]
    rows, cells, base = [], {}, None
    for label, *values in lines[1:]:
        if not label:  # Table 4's second header line ("oodcv / sketch"), folded into our headers
            continue
        if label in BACKBONES:
            base = label
            row = Row(label, BACKBONES[label], NONE)
        elif label.startswith("MM-") and label[3:] in ("ft", "lora"):
            row = Row(label, BACKBONES[base], label[3:])
        else:
            name, _, tuning = label[3:].rpartition("-")
            row = Row(label, *((BACKBONES[name], tuning) if tuning in ("ft", "lora") else (BACKBONES[label[3:]], "ft")))
        rows.append(row)
        cells |= {(row, column.header): re.sub(r"</?b>", "", value) for column, value in zip(spec.columns, values)}
    return rows, cells


def paper_numbers(text: str) -> list[tuple[float | None, float | None]]:
    """(value, delta) of each " / "-separated part of a paper cell; None where it has none ("-")."""
    return [(float(m[1]), float(m[2]) if m[2] else None) if m else (None, None)
            for m in (re.fullmatch(r"\s*([\d.]+)%?\s*(?:\(([+-]?[\d.]+)%\))?\s*", part) for part in text.split(" / "))]


def _rows(spec: Spec, paper_rows: list[Row], results: Results, data: str) -> list[Row]:
    """The paper's rows, each backbone's block followed by the tunings only we ran, then the backbones only we ran."""
    with_base = spec.columns[0].against == "base"
    ours = sorted({(c.backbone, c.tuning) for c in results.cells
                   if (c.stage == spec.stage and c.modality == "image" and c.data == data)
                   or (with_base and c == Cell.base(c.backbone))})
    blocks: dict[str, list[Row]] = {}
    for row in paper_rows:
        blocks.setdefault(row.backbone, []).append(row)
    for backbone, tuning in ours:
        block = blocks.setdefault(backbone, [Row(backbone, backbone, NONE)] if with_base else [])
        if not any(r.tuning == tuning for r in block):
            label = f"MM-{tuning}" if with_base else f"MM-{NAMES.get(backbone, backbone)}-{tuning}"
            block.append(Row(label, backbone, tuning))
    return [row for block in blocks.values() for row in block]


def build(spec: Spec, results: Results, boot: Bootstrap, data: str = "full") -> Table:
    paper_rows, paper = read_paper(spec)
    rows = _rows(spec, paper_rows, results, data)
    cells = {row: Cell.base(row.backbone) if row.tuning == NONE
             else Cell(row.backbone, row.tuning, "image", data, stage=spec.stage) for row in rows}
    entries = {(row, metric): _entry(row, cells[row], metric, column, results, boot, spec.percent,
                                     paper.get((row, column.header), ""))
               for row in rows for column in spec.columns for metric in column.metrics}
    return Table(spec, rows, entries, paper)


def _entry(row: Row, cell: Cell, metric: str, column: Column, results: Results, boot: Bootstrap, percent: bool,
           paper: str) -> Entry:
    value, k = results.value(cell, metric), scale(metric)
    estimate = results.estimate(cell, metric, boot) if value is not None else None
    entry = Entry(row, metric, cell, None if value is None else k * value, estimate and estimate.scaled(k), paper,
                  "%" if percent else "", selected_on=results.selected_on(cell, metric))
    if column.against == "base" and row.tuning != NONE:
        base = Cell.base(row.backbone)
        entry.against, base_value = base.label, results.value(base, metric)
        if value is not None and base_value is not None:
            entry.delta = k * (value - base_value)
            comparison = results.compare(base, cell, metric, boot)
            entry.comparison = comparison and comparison.scaled(k)
    elif column.against not in (None, "base"):  # a change within the model, in percent of another metric (Table 5)
        entry.against, entry.delta_unit = f"{cell.label} {column.against}", "%"
        reference = results.value(cell, column.against)
        if reference == 0:
            entry.no_delta = f"{column.against} is 0: no relative change"
        if value is not None and reference:
            entry.delta = float(relative_change(reference, value))
            entry.comparison = results.compare(cell, cell, column.against, boot, b_metric=metric,
                                               contrast=relative_change)
    return entry


def format_entry(entry: Entry, percent: bool) -> str:
    """`59.1% (+8.7%)* [+6.1, +11.2]`: value, delta with stars, the delta's 95% interval (the value's where there
    is no delta); MISSING without a run."""
    if entry.value is None:
        return MISSING
    d = decimals(entry.metric)
    text = f"{entry.value:.{d}f}" + ("%" if percent else "")
    if entry.delta is not None:
        c = entry.comparison
        text += f" ({entry.delta:+.{d}f}{entry.delta_unit})"
        return text + (f"{stars(c.p)} [{c.low:+.{d}f}, {c.high:+.{d}f}]" if c else " [CI n/a]")
    if entry.no_delta:
        return text + f" ({entry.no_delta})"
    if entry.against:  # the run it is compared with is missing: no delta rather than one against anything else
        return text + f" (no {entry.against})"
    e = entry.estimate
    return text + (f" [{e.low:.{d}f}, {e.high:.{d}f}]" if e else "")


def grid(table: Table) -> list[list[str]]:
    """The table in the paper's shape, each column followed by the paper's value: header line, then one per row."""
    header = ["Models"] + [h for c in table.spec.columns for h in (c.header, f"{c.header} (paper)")]
    body = []
    for row in table.rows:
        chosen = {table.entries[row, m].selected_on for c in table.spec.columns for m in c.metrics} - {None}
        line = [row.label + "".join(SELECTION_MARKS[how] for how in sorted(chosen))]
        for column in table.spec.columns:
            line.append(" / ".join(format_entry(table.entries[row, m], table.spec.percent) for m in column.metrics))
            line.append(table.paper.get((row, column.header), ""))
        body.append(line)
    return [header, *body]


def markdown(table: Table, footnote: str) -> str:
    header, *body = grid(table)
    lines = [f"### {table.spec.caption}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
    return "\n".join(lines + ["", footnote, ""])


def to_csv(table: Table) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(grid(table))
    return out.getvalue()


def tidy(table: Table, results: Results) -> list[dict]:
    """One record per value: what `dvc plots` and a notebook read."""
    out = []
    for row in table.rows:
        for column in table.spec.columns:
            parts = paper_numbers(table.paper.get((row, column.header), ""))
            for i, metric in enumerate(column.metrics):
                e = table.entries[row, metric]
                c, est = e.comparison, e.estimate
                paper_value, paper_delta = parts[i] if i < len(parts) else (None, None)
                out.append({
                    "table": table.spec.name, "row": row.label, "backbone": row.backbone, "tuning": row.tuning,
                    "modality": e.cell.modality, "data": e.cell.data, "metric": metric, "value": e.value,
                    "ci_low": getattr(est, "low", None), "ci_high": getattr(est, "high", None),
                    "against": e.against, "delta": e.delta,
                    "delta_ci_low": getattr(c, "low", None), "delta_ci_high": getattr(c, "high", None),
                    "p_value": getattr(c, "p", None), "test": getattr(c, "test", None),
                    "n_docs": getattr(c or est, "n", None), "paper_value": paper_value, "paper_delta": paper_delta,
                    "run_id": results.run_id(e.cell, metric)})
    return out
