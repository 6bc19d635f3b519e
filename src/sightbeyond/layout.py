"""Where every artefact of the pipeline lives, spelled once for the code; dvc.yaml, which cannot import it, spells
the same paths, and tests/test_layout.py holds every stage's outputs equal to these."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sightbeyond.config import Params

SYNTH = Path("data/shapesworld")  # the embedded default's data, in the real datasets' layouts
FIXTURES = SYNTH / "nlp"  # its benchmark files, in the releases' layouts
SUBSETS = Path("data/subsets")  # the per-type ablation sets, in LLaVA's layout
PREPARED = Path("data/prepared")
MODELS = Path("models")
BACKBONES = MODELS / "backbones"  # each backbone as the `backbone` stage leaves it: built, converted or resolved
RELEASED = MODELS / "released"  # `import_released`'s default: checkpoints in LLaVA's training layout
REPORTS = Path("reports")
CHECKPOINTS = Path("checkpoints")  # the Trainer's working directories, outside the DVC outputs
LOCKS = CHECKPOINTS / "locks"  # one per cell and stage being worked on (io.exclusive)
BEST = "best"  # stage 2's output holds the best step's model here when stage2.best_metric chose one
SELECTION = "selection.json"  # beside it: how it was chosen (metric, step, value, on which documents)


def split_dir(name: str, data: str = "full") -> Path:
    """`stage1`, or `image` / `text` of the instruction set `data`, or a path to a prepared split."""
    if name == "stage1":
        return PREPARED / "stage1"
    return PREPARED / data / name if name in ("image", "text") else Path(name)


def nlp_data_root(params: Params) -> Path | None:
    """Where the NLP benchmarks' release files are: None for the `hub` source, which reads lm-eval's hub copies."""
    source = params.eval_nlp.source
    if source == "hub":
        return None
    return FIXTURES if source == "fixture" else Path(params.eval_nlp.local_root)


NONE = "none"  # the base LLM's tuning, modality and data, as its runs are tagged


@dataclass(frozen=True, order=True)
class Cell:
    """One model of a backbone's grid: its base LLM (tuning, modality and data NONE) or the stage-2 cell data x
    tuning x modality, as the stages' files and runs name it and the report reads it back. `backbone` is the
    backbone's folder name (Params.backbone_key); `ad_hoc` runs write beside the pipeline's files."""

    backbone: str
    tuning: str = NONE        # lora | ft
    modality: str = NONE      # image | text
    data: str = NONE          # full | conversation | detail | reasoning | random20k
    ad_hoc: str | None = field(default=None, compare=False)  # Params.ad_hoc_id: which ad-hoc settings

    @classmethod
    def of(cls, params: Params, tuning: str | None = None, modality: str | None = None) -> Cell:
        if tuning is None:
            return cls(params.backbone_key, ad_hoc=params.ad_hoc_id)
        return cls(params.backbone_key, tuning, modality, params.data, params.ad_hoc_id)

    @property
    def variant(self) -> str:
        return f"{self.tuning}-{self.modality}"

    @property
    def model(self) -> str:
        """The model's name within its backbone: `base`, or `<data>-<tuning>-<modality>` (one LLM per set)."""
        return "base" if self.tuning == NONE else f"{self.data}-{self.variant}"

    @property
    def key(self) -> str:
        """Results' file names and runs' names: `<backbone>-<model>`."""
        return f"{self.backbone}-{self.model}"

    @property
    def stage1_dir(self) -> Path:
        return MODELS / self.backbone / "stage1"

    @property
    def stage2_dir(self) -> Path:
        return MODELS / self.backbone / "stage2" / self.data / self.variant

    @property
    def extracted_dir(self) -> Path:
        return MODELS / self.backbone / "llm" / self.data / self.variant

    def trainer_dir(self, stage: str) -> Path:
        return CHECKPOINTS / self.backbone / ("stage1" if stage == "stage1" else f"{self.data}-{self.variant}")

    @property
    def _output_name(self) -> str:
        return f"{self.key}-{self.ad_hoc}" if self.ad_hoc else self.key

    def results(self, stage: str) -> Path:
        """An evaluation's summary: the pipeline's tracked file, or under results/adhoc/, named with the settings'
        hash, for a run with other settings than params.yaml's (dvc.yaml's outputs stay what the pipeline measured)."""
        return Path("results") / ("adhoc" if self.ad_hoc else "") / stage / f"{self._output_name}.json"

    def predictions(self, stage: str) -> Path:
        """An evaluation's per-document predictions, a folder beside its summary under predictions/."""
        return Path("predictions") / ("adhoc" if self.ad_hoc else "") / stage / self._output_name

    def lock(self, stage: str) -> Path:
        """The lock one process holds while it works on this cell in `stage`: what the stage writes (an ad-hoc
        evaluation's own files, a training's shared checkpoints and output) is what it is named for."""
        name = self.backbone if stage == "stage1" else self.key if stage in ("stage2", "extract") else self._output_name
        return LOCKS / f"{stage}-{name}.lock"

    def run_name(self, stage: str) -> str:
        return f"{stage}-{self.key}"
