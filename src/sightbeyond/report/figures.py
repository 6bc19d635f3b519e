"""The paper's Figures 2-5 from MLflow runs, as PNG, each returning the tidy data it plots (written as CSV).

Bars carry their 95% bootstrap intervals where the run logged per-document results; a bar without a run is not
drawn and says "no run" where it would stand: nothing is filled in from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sightbeyond.report.reading import Cell, Results
from sightbeyond.report.reliance import verdict
from sightbeyond.report.stats import Bootstrap, stars
from sightbeyond.report.tables import SPECS, paper_numbers, read_paper, scale

ALIGNMENT = ("ethics/acc", "truthfulqa_mc1/acc", "truthfulqa_mc2/acc")   # Figures 2 and 3
STEPWISE = ("ethics/acc", "truthfulqa_mc1/acc")                          # Figure 4, as stage 2 logs them
# Figure 5: the paper plots "two multi-modal and four NLP tasks" without naming them; these are its tables' headliners
CORRELATION_MM = ("mme/perception", "coco/cider")
CORRELATION_NLP = ("ethics/acc", "truthfulqa_mc1/acc", "mmlu/acc", "boolq/acc")
DATA_TYPES = ("conversation", "detail", "reasoning", "random20k", "full")

LABELS = {"ethics/acc": "Ethics acc. (%)", "truthfulqa_mc1/acc": "TruthfulQA-mc1 acc. (%)",
          "truthfulqa_mc2/acc": "TruthfulQA-mc2 acc. (%)", "mmlu/acc": "MMLU acc. (%)", "boolq/acc": "BoolQ acc. (%)",
          "mme/perception": "MME perception score", "coco/cider": "COCO CIDEr"}
COLORS = {"base": "0.6", "text-only": "tab:orange", "image": "tab:blue", "conversation": "tab:green",
          "detail": "tab:purple", "reasoning": "tab:red", "random20k": "tab:brown", "full": "tab:blue"}


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _no_runs(fig: Figure, path: Path, what: str) -> None:
    ax = fig.subplots()
    ax.text(0.5, 0.5, f"no runs yet: {what}", ha="center", va="center")
    ax.set_axis_off()
    _save(fig, path)


def _bars(results: Results, boot: Bootstrap, groups: dict[str, dict[str, Cell]], series: list[str], *, figure: str,
          title: str, path: Path, annotate: tuple[str, str] | None = None, note=None) -> list[dict]:
    """A panel per metric of ALIGNMENT that some cell has: per group (x), a bar per series, with its interval; above
    each group, where both ran, the paired difference between the two `annotate` series, with its stars, and
    `note(cells)` under it."""
    ran = [cell for cells in groups.values() for cell in cells.values()]
    metrics = [m for m in ALIGNMENT if any(results.value(cell, m) is not None for cell in ran)]
    fig = Figure(figsize=(min(16.0, 6.0 + 0.4 * len(groups) * len(series)), 1.0 + 3.4 * max(1, len(metrics))),
                 layout="constrained")
    fig.suptitle(title)
    records: list[dict] = []
    if not metrics:
        _no_runs(fig, path, "eval_nlp of " + ", ".join(series[1:]))
        return records
    width = 0.8 / len(series)
    for ax, metric in zip(fig.subplots(len(metrics), 1, squeeze=False)[:, 0], metrics):
        k, top, labelled = scale(metric), 1.0, set()
        for g, (group, cells) in enumerate(groups.items()):
            for i, name in enumerate(series):
                x = g + (i - (len(series) - 1) / 2) * width
                cell = cells.get(name)
                value = results.value(cell, metric) if cell else None
                if value is None:
                    ax.text(x, 0, "no run", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                    continue
                est = results.estimate(cell, metric, boot)
                low, high = (est.low * k, est.high * k) if est else (None, None)
                err = [[k * value - low], [high - k * value]] if est else None
                ax.bar(x, k * value, width, yerr=err, capsize=3, color=COLORS.get(name),
                       label=None if name in labelled else name)
                labelled.add(name)
                top = max(top, high or 0, k * value)
                records.append({"figure": figure, "group": group, "series": name, "metric": metric, "value": k * value,
                                "ci_low": low, "ci_high": high, "run": cell.label})
        if annotate:
            for g, cells in enumerate(groups.values()):
                a, b = cells.get(annotate[0]), cells.get(annotate[1])
                if a is None or b is None or results.value(a, metric) is None or results.value(b, metric) is None:
                    continue
                c = results.compare(a, b, metric, boot)
                delta = k * (results.value(b, metric) - results.value(a, metric))
                ax.text(g, 1.04 * top, f"{annotate[1]} − {annotate[0]}:\n{delta:+.1f}"
                        f"{stars(c.p) if c else ' (CI n/a)'}" + (f"\n{note(cells)}" if note else ""),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, (1.4 if note else 1.25) * top)
        ax.set_xticks(range(len(groups)), list(groups), rotation=20 if len(groups) > 4 else 0,
                      ha="right" if len(groups) > 4 else "center")
        ax.set_xlabel("backbone, tuning")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return records


def _ablation(results: Results, series: dict[str, tuple[str, str]],
              required: tuple[str, ...]) -> dict[str, dict[str, Cell]]:
    """Per "backbone, tuning" that ran any `required` series: its base LLM and its eval_nlp cell of each series
    (series -> modality, data) that ran."""
    groups: dict[str, dict[str, Cell]] = {}
    for backbone, tuning in sorted({(c.backbone, c.tuning) for c in results.cells if c.stage == "eval_nlp"}):
        cells = {name: cell for name, (modality, data) in series.items()
                 if (cell := Cell(backbone, tuning, modality, data)) in results.cells}
        if any(name in cells for name in required):
            groups[f"{backbone}, {tuning}"] = {"base": Cell.base(backbone), **cells}
    return groups


def modality(results: Results, boot: Bootstrap, data: str, path: Path) -> list[dict]:
    """Figure 2: the base LLM, tuned on the instructions' text alone, and tuned with their images (the models that
    were tuned text-only)."""
    groups = _ablation(results, {"text-only": ("text", data), "image": ("image", data)}, ("text-only",))
    return _bars(results, boot, groups, ["base", "text-only", "image"], figure="fig2_modality", path=path,
                 annotate=("text-only", "image"),
                 note=lambda cells: verdict(results, cells["image"].backbone, cells["image"].tuning, data, boot)[0],
                 title=f"Figure 2: text-only vs image instruction tuning ({data} data); bars: 95% bootstrap CI")


def data_types(results: Results, boot: Bootstrap, path: Path) -> list[dict]:
    """Figure 3: image tuning on each type of instruction data (20k each in the paper) and on the full set (the
    models tuned on some type)."""
    groups = _ablation(results, {d: ("image", d) for d in DATA_TYPES}, DATA_TYPES[:-1])
    return _bars(results, boot, groups, ["base", *DATA_TYPES], figure="fig3_data_types", path=path,
                 title="Figure 3: image instruction tuning per type of data; bars: 95% bootstrap CI")


def stepwise(results: Results, path: Path) -> dict[str, list[dict]]:
    """Figure 4: Ethics and TruthfulQA-mc1 during stage 2, per run; returns each run's curve (step, metrics)."""
    runs = [c for c in sorted(results.cells) if c.stage == "stage2"]
    curves = {c.label: {m: results.history(c, m) for m in STEPWISE} for c in runs}
    curves = {label: h for label, h in curves.items() if any(h.values())}
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    fig.suptitle("Figure 4: Ethics and TruthfulQA-mc1 during visual instruction tuning (stage 2)")
    if not curves:
        _no_runs(fig, path, "stage 2 with step-wise evaluation")
        return {}
    # one row per backbone: backbones are evaluated on their own document sets (fixtures, samples, the releases),
    # so their curves share no axis
    backbones = sorted({c.backbone for c in runs if c.label in curves})
    fig.set_size_inches(12, 4.8 * len(backbones))
    axes = fig.subplots(len(backbones), len(STEPWISE), squeeze=False)
    for row, backbone in zip(axes, backbones):
        for ax, metric in zip(row, STEPWISE):
            for cell in (c for c in runs if c.backbone == backbone and c.label in curves):
                if history := curves[cell.label][metric]:
                    steps, values = zip(*history)
                    ax.plot(steps, [scale(metric) * v for v in values], marker="o", markersize=3, label=cell.label)
            ax.set_title(backbone, fontsize=10)
            ax.set_xlabel("training step")
            ax.set_ylabel(LABELS[metric])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    _save(fig, path)
    table = {}
    for label, history in curves.items():
        by_metric = {m: dict(points) for m, points in history.items()}
        table[label] = [{"step": s, **{m.replace("/", "_"): scale(m) * by_metric[m][s] if s in by_metric[m] else None
                                       for m in STEPWISE}} for s in sorted(set().union(*by_metric.values()))]
    return table


def paper_values(metric: str) -> dict[tuple[str, str], float]:
    """The paper's published value of `metric` per (backbone, tuning), in its units."""
    for spec in SPECS.values():
        for column in spec.columns:
            if metric in column.metrics:
                rows, cells = read_paper(spec)
                i = column.metrics.index(metric)
                return {(r.backbone, r.tuning): v for r in rows
                        if (v := paper_numbers(cells[r, column.header])[i][0]) is not None}
    return {}


def _pearson(x: list[float], y: list[float]) -> str:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return f"r n/a (n={len(x)})"
    return f"r = {np.corrcoef(x, y)[0, 1]:+.2f} (n={len(x)})"


def correlation(results: Results, data: str, path: Path) -> list[dict]:
    """Figure 5: each image-tuned model's multimodal score against its LLM's NLP score, with Pearson's r; the
    paper's own models (Tables 1, 3, 4) in grey, with their r, for reference."""
    models = sorted({(c.backbone, c.tuning) for c in results.cells if c.stage == "eval_mm" and c.data == data})
    fig = Figure(figsize=(4 * len(CORRELATION_NLP), 3.8 * len(CORRELATION_MM)), layout="constrained")
    fig.suptitle(f"Figure 5: multimodal vs NLP scores of the image-tuned models ({data} data)")
    axes = fig.subplots(len(CORRELATION_MM), len(CORRELATION_NLP), squeeze=False)
    records = []
    for row, mm in zip(axes, CORRELATION_MM):
        for ax, nlp in zip(row, CORRELATION_NLP):
            paper_mm, paper_nlp = paper_values(mm), paper_values(nlp)
            shared = sorted(paper_mm.keys() & paper_nlp.keys())
            px, py = [paper_nlp[m] for m in shared], [paper_mm[m] for m in shared]
            ax.scatter(px, py, marker="x", color="0.6", label=f"paper, {_pearson(px, py)}")
            ours = [(f"{backbone}-{tuning}", scale(nlp) * x, scale(mm) * y) for backbone, tuning in models
                    if (x := results.value(Cell(backbone, tuning, "image", data), nlp)) is not None
                    and (y := results.value(Cell(backbone, tuning, "image", data, stage="eval_mm"), mm)) is not None]
            for name, x, y in ours:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                records.append({"mm_metric": mm, "nlp_metric": nlp, "model": name, "nlp": x, "mm": y})
            ox, oy = [x for _, x, _ in ours], [y for _, _, y in ours]
            ax.scatter(ox, oy, color="tab:blue", label=f"ours, {_pearson(ox, oy)}")
            ax.set_xlabel(LABELS.get(nlp, nlp))
            ax.set_ylabel(LABELS.get(mm, mm))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, path)
    return records
