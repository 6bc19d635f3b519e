"""Step-wise evaluation: lm-eval's `evaluate` with `HFLM` (tasks built once) against `StepwiseEvaluator`, same model,
same documents; their times, the ratio per task and overall, and whether every per-document prediction agrees.

    .venv/bin/python benchmarks/stepwise_eval.py                     # the default step-wise set, TruthfulQA mc2 too
    .venv/bin/python benchmarks/stepwise_eval.py --threads 1 --repeats 3
    .venv/bin/python benchmarks/stepwise_eval.py --model models/backbones/smollm2/llm --limit 30

The model is `--model` (a causal LM directory, with its tokenizer: SmolLM2 after `dvc exp run -S backbone=smollm2`)
or by default a randomly initialised LLaMA (hidden 256, 4 layers, 8 heads, LLaMA's 32000-token vocabulary: 19.6M
parameters) with a byte-level BPE tokenizer trained on the documents that adds BOS as LLaMA's does; fp32 on CPU or
bf16 on a GPU. The documents are the real samples of ../shared/data (the first 200 TruthfulQA questions, 300 rows of
each ETHICS subset) when that folder exists, else the project's fixtures, read by the `local` source; `--limit N`
takes a fixed subsample of N documents per task (TruthfulQA) and 2N (each ETHICS subset), as step-wise evaluation does.

A task's time is one evaluation of it, the best of `--repeats` after one warm-up (the step-wise evaluation runs at
every eval step); the evaluator's one-off preparation (rendering and tokenising every request) is printed apart.
The overall ratio is over the default step-wise set (ETHICS and TruthfulQA-mc1) evaluated together, as training does.
A document's prediction agrees when both pick the same choice, flag the same choices greedy, and give the same
metric values (within 1e-4: TruthfulQA-mc2's is a probability mass). Also printed: the largest difference between
the two log-likelihoods of any choice. Then, where the hardware has bf16 (training's precision for the step-wise
evaluation: CUDA, or a CPU with AVX512-BF16/AMX), the evaluator under bf16 autocast against itself in fp32 on the
same documents: the time ratio, and how many predictions agree and how far the task scores move.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sightbeyond.config import load_params
from sightbeyond.embedded.nlp_fixtures import write_nlp_fixtures
from sightbeyond.tasks.nlp import evaluate_loaded, fixed_subsample, load_tasks, quiet
from sightbeyond.tasks.stepwise_eval import StepwiseEvaluator
from sightbeyond.training.common import has_bf16

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the `local` source reads its *.sample.csv files
DEFAULT_SET = load_params(Path(__file__).resolve().parents[1] / "params.yaml").stage2.stepwise_tasks


def data_root(scratch: Path) -> tuple[Path, str]:
    if SHARED.is_dir():
        return SHARED, f"real samples from {SHARED}"
    write_nlp_fixtures(scratch)
    return scratch, "the project's fixtures (no ../shared/data)"


def tokenizer_for(root: Path):  # the random model's
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train([str(p) for p in sorted(root.rglob("*.csv"))], trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_model(tokenizer, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=688, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def subsample(tasks, limit: int | None) -> dict[str, list[int]] | None:
    """TruthfulQA's `limit` questions and twice as many rows of each ETHICS subset (their documents are shorter)."""
    if limit is None:
        return None
    return {name: docs for name in tasks["tasks"]
            for name, docs in fixed_subsample({"tasks": {name: tasks["tasks"][name]}},
                                              limit * (2 if name.startswith("ethics") else 1)).items()}


def best_time(run, repeats: int):
    result = run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def agreement(fast, reference) -> tuple[int, int, float]:
    """(documents that agree, documents, largest |log-likelihood difference|) over all tasks."""
    agree = total = 0
    worst = 0.0
    for task, docs in fast.docs.items():
        for doc, sample in zip(docs, reference.samples[task], strict=True):
            assert doc.doc_id == sample["doc_id"]
            lls = [r[0][0] for r in sample["resps"]]
            greedy = [r[0][1] for r in sample["resps"]]
            worst = max(worst, *(abs(a - b) for a, b in zip(lls, doc.loglikelihoods)))
            same_values = all(abs(float(sample[m]) - float(v)) <= 1e-4 for m, v in doc.values.items())
            same_choice = max(range(len(lls)), key=lls.__getitem__) == max(range(len(lls)), key=doc.loglikelihoods.__getitem__)
            agree += same_choice and greedy == doc.is_greedy and same_values
            total += 1
    return agree, total, worst


def same_predictions(a, b) -> tuple[int, int]:
    """Documents whose chosen answer (the highest log-likelihood) is the same in two evaluator results."""
    pairs = [(x, y) for task in b.docs for x, y in zip(a.docs[task], b.docs[task], strict=True)]
    pick = lambda d: max(range(len(d.loglikelihoods)), key=d.loglikelihoods.__getitem__)  # noqa: E731
    return sum(pick(x) == pick(y) for x, y in pairs), len(pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["truthfulqa_mc1", "truthfulqa_mc2", *DEFAULT_SET[1:]],
                   help="benchmarks timed one by one (loglikelihood ones)")
    p.add_argument("--batch-size", type=int, default=16, help="of both (HFLM's requests, the evaluator's rows)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (on a shared machine, 1 gives steadier times)")
    p.add_argument("--model", type=Path, help="a causal LM directory with its tokenizer (default: a random LLaMA)")
    p.add_argument("--limit", type=int, help="a fixed subsample: N TruthfulQA questions, 2N rows per ETHICS subset")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root, source = data_root(Path(tmp))
        if args.model:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model)
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            model, name = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval(), str(args.model)
        else:
            tokenizer = tokenizer_for(root)
            model, name = build_model(tokenizer, device), "random LLaMA"
        n_params = sum(p.numel() for p in model.parameters())
        print(f"documents: {source}{'' if args.limit is None else f', subsample of {args.limit} per task (ETHICS {2 * args.limit})'}")
        print(f"model: {name}, {n_params / 1e6:.1f}M parameters, {next(model.parameters()).dtype} on {device}"
              f"{'' if device.type == 'cuda' else f', {torch.get_num_threads()} threads'}; batch size {args.batch_size}")
        print(f"{'task':<24}{'docs':>6}{'HFLM (s)':>10}{'step-wise (s)':>15}{'ratio':>8}{'  agree':>14}"
              f"{'max |d ll|':>12}{'setup (s)':>11}")
        with quiet():
            hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
        everything_agrees, bf16_rows = True, []
        rows = [(name, [name]) for name in args.tasks] + [("default step-wise set", list(DEFAULT_SET))]
        for label, names in rows:
            tasks = load_tasks(names, "local", root)
            samples = subsample(tasks, args.limit)
            start = time.perf_counter()
            evaluator = StepwiseEvaluator(model, tokenizer, tasks, samples=samples, batch_size=args.batch_size)
            setup = time.perf_counter() - start
            t_hflm, reference = best_time(lambda: evaluate_loaded(hflm, tasks, samples=samples, log_samples=True),
                                          args.repeats)
            t_fast, fast = best_time(evaluator.run, args.repeats)
            agree, total, worst = agreement(fast, reference)
            everything_agrees &= agree == total
            print(f"{label:<24}{total:>6}{t_hflm:>10.2f}{t_fast:>15.2f}{t_hflm / t_fast:>7.1f}x"
                  f"{f'{agree}/{total}':>14}{worst:>12.1e}{setup:>11.2f}")
            if has_bf16():
                def bf16():
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        return evaluator.run()
                t_bf16, low = best_time(bf16, args.repeats)
                bf16_rows.append((label, t_fast, t_bf16, *same_predictions(low, fast),
                                  max(abs(low.metrics[m] - fast.metrics[m]) for m in fast.metrics)))
        print(f"every per-document prediction agrees: {'yes' if everything_agrees else 'NO'}")
        if bf16_rows:
            print(f"\nstep-wise evaluator, bf16 autocast against fp32 (same documents)\n{'task':<24}{'fp32 (s)':>10}"
                  f"{'bf16 (s)':>10}{'speed-up':>10}{'same choice':>14}{'max |d metric|':>16}")
            for label, t32, t16, same, total, moved in bf16_rows:
                print(f"{label:<24}{t32:>10.2f}{t16:>10.2f}{t32 / t16:>9.1f}x{f'{same}/{total}':>14}{moved:>16.4f}")


if __name__ == "__main__":
    main()
