"""The runs a report reads: each cell's latest finished run in MLflow, found by the tags every stage run carries."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from sightbeyond import layout
from sightbeyond.config import ConfigError
from sightbeyond.layout import NONE
from sightbeyond.report import per_document as per_doc
from sightbeyond.report.stats import (Bootstrap, Comparison, Contrast, Docs, Estimate, bootstrap, difference,
                                      paired_bootstrap)

STAGES = ("stage1", "stage2", "eval_nlp", "eval_mm")
# what an evaluation measured (nlp_stage.measured): two runs are paired only when they agree on every one
MEASURED = ("eval_source", "eval_data", "eval_limit", "eval_dtype", "add_bos_token", "eval_holdout")


@dataclass(frozen=True, order=True)
class Cell(layout.Cell):
    """A model of the ablation matrix (layout's cell, its backbone named as its runs are tagged) and the stage whose
    runs measured it; `run` a chosen run of the cell, "" for its latest."""

    stage: str = "eval_nlp"
    run: str = ""

    @classmethod
    def base(cls, backbone: str) -> Cell:
        return cls(backbone)

    @classmethod
    def stage1(cls, backbone: str) -> Cell:
        """A backbone's stage-1 run (its projector), which every image cell of the backbone starts from."""
        return cls(backbone, stage="stage1")

    @property
    def label(self) -> str:
        name = (f"{self.backbone}/{'stage1' if self.stage == 'stage1' else 'base'}" if self.tuning == NONE
                else f"{self.backbone}/{self.tuning}-{self.modality}/{self.data}")
        return f"{name}@{self.run[:8]}" if self.run else name

    @property
    def shown(self) -> str:
        """The label as a tracked file may print it: a backbone given as a local directory by its folder's name, not
        the path of somebody's machine."""
        if not self.backbone.startswith(("/", ".", "~")):
            return self.label
        return self.label.replace(self.backbone, f"{Path(self.backbone).name} (a local directory)", 1)

    @classmethod
    def parse(cls, text: str, stage: str, data: str = "full") -> Cell:
        """`<backbone>/base` or `<backbone>/<tuning>-<modality>[/<data>]`, as `label` writes them."""
        backbone, _, rest = text.partition("/")
        variant, _, data = rest.partition("/") if "/" in rest else (rest, "", data)
        if variant == "base":
            return cls.base(backbone)
        tuning, sep, modality = variant.partition("-")
        if not (backbone and sep and tuning and modality):
            raise ConfigError(f"{text!r}: expected <backbone>/base or <backbone>/<tuning>-<modality>[/<data>]")
        return cls(backbone, tuning, modality, data, stage=stage)


@dataclass
class CellRuns:
    cell: Cell
    metrics: dict[str, float] = field(default_factory=dict)
    run_of: dict[str, str] = field(default_factory=dict)   # metric -> the run that logged it (eval_mm: one per family)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # run -> its tags


def cell_of(tags: dict[str, str]) -> Cell | None:
    if tags.get("stage") == "stage1" and tags.get("backbone"):
        return Cell.stage1(tags["backbone"])
    if tags.get("stage") not in STAGES or not all(tags.get(k) for k in ("backbone", "tuning", "modality", "data")):
        return None
    # the base LLM saw no tuning data, whatever `grid.data` said when it was evaluated
    data = NONE if tags["tuning"] == NONE else tags["data"]
    return Cell(tags["backbone"], tags["tuning"], tags["modality"], data, stage=tags["stage"])


class Results:
    """The cells found, with their metrics, per-document results, intervals and paired comparisons."""

    def __init__(self, cells: dict[Cell, CellRuns], left_out: list[str] | None = None):
        self.cells = cells
        self.left_out = left_out or []  # runs not read, and why
        self._docs: dict[tuple[Cell, str], Docs | None] = {}  # artifacts are read once per report

    def value(self, cell: Cell, metric: str) -> float | None:
        found = self.cells.get(cell)
        return found.metrics.get(metric) if found else None

    def run_id(self, cell: Cell, metric: str) -> str | None:
        found = self.cells.get(cell)
        return found.run_of.get(metric) if found else None

    def docs(self, cell: Cell, metric: str) -> Docs | None:
        if (cell, metric) not in self._docs:
            value, run_id = self.value(cell, metric), self.run_id(cell, metric)
            self._docs[cell, metric] = None if value is None or run_id is None else per_doc.read(run_id, metric, value)
        return self._docs[cell, metric]

    def estimate(self, cell: Cell, metric: str, boot: Bootstrap) -> Estimate | None:
        found = self.docs(cell, metric)
        return bootstrap(found, boot) if found is not None else None

    def compare(self, a: Cell, b: Cell, metric: str, boot: Bootstrap, *, b_metric: str | None = None,
                contrast: Contrast = difference) -> Comparison | None:
        """b's `b_metric` (default `metric`) against a's `metric`, paired by document; None without both runs'
        documents."""
        if why := self.unpaired(a, metric, b, b_metric or metric):
            warnings.warn(f"{b.label} against {a.label} on {metric}: {why}; not compared", stacklevel=2)
            return None
        da, db = self.docs(a, metric), self.docs(b, b_metric or metric)
        return paired_bootstrap(da, db, boot, contrast) if da is not None and db is not None else None

    def selected_on(self, cell: Cell, metric: str) -> str | None:
        """Where stage2.best_metric chose the evaluated checkpoint ("holdout", "reported documents"), if it did."""
        found = self.cells.get(cell)
        return found.tags.get(self.run_id(cell, metric) or "", {}).get("selected_on") if found else None

    def unpaired(self, a: Cell, metric: str, b: Cell, b_metric: str) -> str | None:
        """Why the runs behind two cells' metrics cannot be paired (other documents, precision or BOS), if they
        cannot: the same document keys alone do not make the same documents."""
        ta, tb = (self.cells[c].tags.get(self.run_id(c, m) or "", {}) if c in self.cells else {}
                  for c, m in ((a, metric), (b, b_metric)))
        differ = [f"{k} {ta.get(k, 'unrecorded')} vs {tb.get(k, 'unrecorded')}" for k in MEASURED if ta.get(k) != tb.get(k)]
        return f"measured differently ({', '.join(differ)})" if differ else None

    def pin(self, run_id: str) -> Cell:
        """Add one chosen run (any status) as a cell of its own, e.g. to compare two runs of the same cell."""
        from mlflow import MlflowClient

        run = MlflowClient().get_run(run_id)
        cell = cell_of(run.data.tags)
        if cell is None:
            raise ConfigError(f"run {run_id} is not a stage2, eval_nlp or eval_mm run of a cell (tag stage: "
                             f"{run.data.tags.get('stage')!r})")
        cell = dataclasses.replace(cell, run=run_id)
        self.cells[cell] = CellRuns(cell, dict(run.data.metrics), {m: run_id for m in run.data.metrics},
                                    {run_id: dict(run.data.tags)})
        return cell

    def history(self, cell: Cell, metric: str) -> list[tuple[int, float]]:
        """A metric logged at training steps (stage 1's and 2's step-wise evaluations), in step order."""
        from mlflow import MlflowClient

        run_id = self.run_id(cell, metric)
        if run_id is None:
            return []
        points = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, metric)}
        return sorted(points.items())


def latest(experiment: str, *, git_commit: str | None = None, dvc_exp: str | None = None,
           measured: dict[str, str] | None = None) -> Results:
    """Each cell's latest FINISHED runs in `experiment` (eval_mm: the latest of each benchmark family), optionally
    only those of a git commit (a prefix of tag `git_commit`) or of a DVC experiment (tag `dvc_exp`). `measured`:
    the measurement eval_nlp runs must carry (nlp_stage.expected); the others are left out, and named."""
    import mlflow

    from sightbeyond.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        return Results({})
    filters = ["attributes.status = 'FINISHED'"]
    if git_commit:
        filters.append(f"tags.git_commit LIKE '{git_commit}%'")
    if dvc_exp:
        filters.append(f"tags.dvc_exp = '{dvc_exp}'")
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=" AND ".join(filters),
                              order_by=["attributes.start_time DESC"], output_format="list")
    cells: dict[Cell, CellRuns] = {}
    seen, left_out = set(), []
    for run in runs:  # newest first: the first run of a cell (and family) is the one kept
        cell = cell_of(run.data.tags)
        if cell is None or (cell, run.data.tags.get("family")) in seen:
            continue
        tags = run.data.tags  # a run from before a tag existed is not held to it
        if measured and cell.stage == "eval_nlp" and (
                differ := [k for k, v in measured.items() if k in tags and tags[k] != v]):
            left_out.append(f"`{cell.shown}` run {run.info.run_id}: measured otherwise than params.yaml says ("
                            + ", ".join(f"{k} {tags[k]} not {measured[k]}" for k in differ) + ")")
            continue
        if tags.get("ad_hoc") == "true":  # run with `-S` settings: not the pipeline's cell, whatever it measured
            left_out.append(f"`{cell.shown}` run {run.info.run_id}: ad hoc (`-S` settings, not params.yaml's)")
            continue
        seen.add((cell, run.data.tags.get("family")))
        found = cells.setdefault(cell, CellRuns(cell))
        found.tags[run.info.run_id] = dict(run.data.tags)
        for name, value in run.data.metrics.items():
            found.metrics.setdefault(name, value)
            found.run_of.setdefault(name, run.info.run_id)
    return Results(cells, left_out)
