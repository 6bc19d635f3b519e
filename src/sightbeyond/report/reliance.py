"""Whether each image cell reads its image, beside the image - text-only differences it is compared on.

The gap is the held-out assistant-token loss with another record's image minus with the right one (nats per token,
tasks/reliance.py): zero for a model that ignores its image. An image cell whose gap's interval does not exclude 0
shows no reliance, and its image - text-only differences then compare two trainings on the same text.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from sightbeyond.report.reading import Cell, Results
from sightbeyond.report.stats import Bootstrap, stars

GAP = "reliance/gap"
ALIGNMENT = ("ethics/acc", "truthfulqa_mc1/acc", "truthfulqa_mc2/acc")
NO_RELIANCE = "no image reliance"


def image_cells(results: Results, data: str) -> list[tuple[str, str]]:
    """(backbone, tuning) of every image cell that ran stage 2 or eval_mm on `data`."""
    return sorted({(c.backbone, c.tuning) for c in results.cells
                   if c.stage in ("stage2", "eval_mm") and c.modality == "image" and c.data == data})


def verdict(results: Results, backbone: str, tuning: str, data: str, boot: Bootstrap) -> tuple[str, dict]:
    """The cell's eval_mm gap with its interval, in words ("gap +0.31 [+0.25, +0.37]" or NO_RELIANCE ...), and the
    numbers."""
    cell = Cell(backbone, tuning, "image", data, stage="eval_mm")
    gap, est = results.value(cell, GAP), None
    if gap is None:
        return "gap: no run", {"gap": None, "gap_ci_low": None, "gap_ci_high": None, "reads_image": None}
    est = results.estimate(cell, GAP, boot)
    reads = est.low > 0 if est else gap > 0
    text = f"gap {gap:+.3f}" + (f" [{est.low:+.3f}, {est.high:+.3f}]" if est else " [CI n/a]")
    return (text if reads else f"{NO_RELIANCE} ({text})"), {
        "gap": gap, "gap_ci_low": est and est.low, "gap_ci_high": est and est.high, "reads_image": reads}


def rows(results: Results, boot: Bootstrap, data: str) -> list[dict]:
    """Per image cell: its stage-1 and eval_mm gaps, POPE's yes/no AUC with the right and another image, and each
    image - text-only difference of the LLM's scores, with intervals."""
    out = []
    for backbone, tuning in image_cells(results, data):
        text, numbers = verdict(results, backbone, tuning, data, boot)
        stage1 = Cell.stage1(backbone)
        stage1_est = results.estimate(stage1, GAP, boot) if results.value(stage1, GAP) is not None else None
        mm = Cell(backbone, tuning, "image", data, stage="eval_mm")
        row = {"backbone": backbone, "tuning": tuning, "data": data, "verdict": text, **numbers,
               "stage1_gap": results.value(stage1, GAP), "stage1_gap_ci_low": stage1_est and stage1_est.low,
               "stage1_gap_ci_high": stage1_est and stage1_est.high,
               "pope_random_auc": results.value(mm, "pope_random/auc"),
               "pope_random_auc_deranged": results.value(mm, "pope_random/auc_deranged")}
        image, text_only = Cell(backbone, tuning, "image", data), Cell(backbone, tuning, "text", data)
        for metric in ALIGNMENT:
            a, b = results.value(text_only, metric), results.value(image, metric)
            c = results.compare(text_only, image, metric, boot) if a is not None and b is not None else None
            name = metric.replace("/", "_")
            row |= {f"{name}_image_minus_text": None if a is None or b is None else 100 * (b - a),
                    f"{name}_ci_low": c and 100 * c.low, f"{name}_ci_high": c and 100 * c.high,
                    f"{name}_p": c and c.p}
        out.append(row)
    return out


def _number(value, fmt: str = "+.3f") -> str:
    return "—" if value is None else format(value, fmt)


def markdown(records: list[dict], selection: str) -> str:
    header = ["image cell", "stage-1 gap", "eval_mm gap", "POPE-random AUC (right / another image)",
              *(f"{m} image − text-only" for m in ALIGNMENT)]
    lines = ["### Image reliance of every image cell", "",
             f"{selection}. Gap: held-out assistant-token loss with another record's image minus with the right one "
             "(nats/token), 95% bootstrap interval over records; a cell whose interval does not exclude 0 shows "
             f"\"{NO_RELIANCE}\", and its image − text-only differences compare two trainings on the same text.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        stage1 = _number(r["stage1_gap"]) + (f" [{r['stage1_gap_ci_low']:+.3f}, {r['stage1_gap_ci_high']:+.3f}]"
                                             if r["stage1_gap_ci_low"] is not None else "")
        deltas = []
        for metric in ALIGNMENT:
            name = metric.replace("/", "_")
            d = r[f"{name}_image_minus_text"]
            deltas.append("—" if d is None else f"{d:+.1f}{stars(r[f'{name}_p']) if r[f'{name}_p'] is not None else ''}"
                          + (f" [{r[f'{name}_ci_low']:+.1f}, {r[f'{name}_ci_high']:+.1f}]" if r[f"{name}_ci_low"] is not None
                             else "") + ("" if r["reads_image"] else f" ({NO_RELIANCE})"))
        auc = f"{_number(r['pope_random_auc'], '.3f')} / {_number(r['pope_random_auc_deranged'], '.3f')}"
        lines.append(f"| {r['backbone']}/{r['tuning']}-image/{r['data']} | {stage1} | {r['verdict']} | {auc} | "
                     + " | ".join(deltas) + " |")
    return "\n".join(lines + [""]) if records else "\n".join(lines[:3] + ["no image cell has run", ""])


def figure(results: Results, data: str, path: Path) -> dict[str, list[dict]]:
    """The gap against the training step: stage 1, then each image cell of stage 2, one panel per backbone; returns
    each run's curve."""
    backbones = sorted({b for b, _ in image_cells(results, data)} | {c.backbone for c in results.cells if c.stage == "stage1"})
    runs = {b: [Cell.stage1(b)] + [Cell(b, t, "image", data, stage="stage2") for bb, t in image_cells(results, data) if bb == b]
            for b in backbones}
    curves = {cell.label + (" (stage 2)" if cell.stage == "stage2" else ""): (cell, results.history(cell, GAP))
              for cells in runs.values() for cell in cells}
    curves = {label: (cell, h) for label, (cell, h) in curves.items() if h}
    fig = Figure(figsize=(12, 4.2 * max(1, len(backbones))), layout="constrained")
    fig.suptitle("Image reliance during training: held-out loss with another image minus with the right one")
    if not curves:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no runs yet: stage 1 or image cells with held-out records", ha="center", va="center")
        ax.set_axis_off()
    else:
        axes = fig.subplots(len(backbones), 2, squeeze=False)
        for (stage1_ax, stage2_ax), backbone in zip(axes, backbones):
            for label, (cell, history) in curves.items():
                if cell.backbone != backbone:
                    continue
                ax = stage1_ax if cell.stage == "stage1" else stage2_ax
                steps, values = zip(*history)
                ax.plot(steps, values, marker="o", markersize=3, label=label)
            for ax, stage in ((stage1_ax, "stage 1 (projector)"), (stage2_ax, "stage 2 (image cells)")):
                ax.axhline(0, color="0.5", linewidth=0.8)
                ax.set_title(f"{backbone}: {stage}", fontsize=10)
                ax.set_xlabel("training step")
                ax.set_ylabel("gap (nats/token)")
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return {label: [{"step": s, "gap": v} for s, v in history] for label, (_, history) in curves.items()}
