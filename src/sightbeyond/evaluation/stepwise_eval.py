"""lm-eval's loglikelihood tasks scored exactly as `HFLM` scores them, but prepared once and run again and again on
changing weights (step-wise evaluation during training): several times faster than lm-eval's `evaluate` with HFLM.

What lm-eval redoes on every call is done once here: the prompts are rendered and tokenised (by HFLM's own rules:
the same tokens, the same left truncation) when the evaluator is built. Each call then only runs the model:
- the longest token prefix every request of a task shares (TruthfulQA's 6-shot primer, MMLU's five shots of a
  subject, an instruction) goes through the model once, and its key/value cache serves every request of the task;
- requests whose inputs are the same tokens (ETHICS's " no" / " yes": one-token answers after the same prompt) share
  one row, as HFLM's logits cache does;
- the vocabulary projection and softmax are computed only where a continuation token is scored.
Each document's (log-likelihood, is-greedy) pairs then go through the task's own `process_results` and aggregation,
and groups (MMLU) through lm-eval's group aggregation, so the metrics are lm-eval's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sightbeyond.evaluation.nlp import metrics_from_results, quiet, reseed_fewshot

_LOGLIKELIHOOD_TYPES = ("multiple_choice", "loglikelihood")


@dataclass
class DocResult:
    doc_id: int                          # the document's index in the task's evaluation split
    loglikelihoods: list[float]          # per request (choice), in lm-eval's order
    is_greedy: list[bool]
    values: dict[str, Any]               # the task's process_results


@dataclass
class StepwiseResult:
    metrics: dict[str, float]            # our names (sightbeyond.evaluation.nlp)
    docs: dict[str, list[DocResult]] = field(repr=False)   # per lm-eval task


@dataclass
class _Request:
    row: int                             # the model input it reads (several requests may share one)
    continuation: list[int]


@dataclass
class _Chunk:
    input_ids: torch.Tensor              # (rows, length): the rows' tokens after the shared prefix, right-padded
    scored: torch.Tensor                 # (rows, length) bool: the positions whose next-token distribution is read
    token_index: torch.Tensor            # (scored tokens,): for each request's continuation token, its scored position
    tokens: torch.Tensor                 # (scored tokens,): the continuation token
    request: torch.Tensor                # (scored tokens,): the request it belongs to (chunk-local)
    requests: list[int]                  # chunk-local request -> task-wide request


@dataclass
class _Task:
    name: str
    task: Any                            # lm-eval's Task
    docs: list[tuple[int, dict]]         # (doc_id as lm-eval's samples number it, doc)
    requests_per_doc: list[list[int]]    # doc -> its requests, ordered by lm-eval's idx
    prefix: torch.Tensor                 # (1, prefix length)
    chunks: list[_Chunk]
    n_requests: int


class StepwiseEvaluator:
    """Evaluates `model` (any causal LM of transformers taking `cache` and `logits_to_keep`; with LoRA unmerged too)
    on the loglikelihood tasks of `tasks` (from `nlp.load_tasks`), on the documents `samples` names per task."""

    def __init__(self, model, tokenizer, tasks: dict[str, Any], *, samples: dict[str, list[int]] | None = None,
                 batch_size: int = 16):
        from lm_eval.models.huggingface import HFLM

        self.model, self.groups = model, tasks.get("groups", {})
        reseed_fewshot(tasks)
        with quiet():
            # HFLM's tokenisation and truncation rules, applied once to every request
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            self.tasks = [self._prepare(name, task, lm, (samples or {}).get(name), batch_size)
                          for name, task in tasks["tasks"].items()]

    @staticmethod
    def _prepare(name: str, task, lm, indices: list[int] | None, batch_size: int) -> _Task:
        if task.OUTPUT_TYPE not in _LOGLIKELIHOOD_TYPES or task.config.filter_list is not None:
            raise ValueError(f"{name}: step-wise evaluation scores loglikelihood tasks without filters; "
                             f"{name} is {task.OUTPUT_TYPE}")
        task.build_all_requests(samples=indices, rank=0, world_size=1)
        docs = list(task.doc_iterator(rank=0, world_size=1, samples=indices))
        instances = sorted(task.instances, key=lambda inst: (inst.doc_id, inst.idx))
        position = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
        requests_per_doc: list[list[int]] = [[] for _ in docs]
        inputs, continuations = [], []
        for r, instance in enumerate(instances):
            requests_per_doc[position[instance.doc_id]].append(r)
            context, continuation = _encode(lm, *instance.args)
            whole = (context + continuation)[-(lm.max_length + 1):]
            inputs.append(tuple(whole[:-1]))
            continuations.append(continuation)
        rows = list(dict.fromkeys(inputs))
        row_of = {row: i for i, row in enumerate(rows)}
        requests = [_Request(row_of[inp], cont) for inp, cont in zip(inputs, continuations)]
        # Every scored position must come after the shared prefix: the first scored one of a request is the one
        # predicting its first continuation token.
        prefix_length = min(_common_prefix_length(rows), *(len(inp) - len(c) for inp, c in zip(inputs, continuations)))
        prefix = torch.tensor([rows[0][:prefix_length]], dtype=torch.long)
        docs_ = [(indices[doc_id] if indices else doc_id, doc) for doc_id, doc in docs]
        return _Task(name, task, docs_, requests_per_doc, prefix,
                     _chunks(rows, requests, prefix_length, batch_size), len(requests))

    @torch.no_grad()
    def run(self) -> StepwiseResult:
        """The tasks' metrics and per-document results for the model's current weights (in its current mode: the
        caller puts it in eval mode, as HFLM does)."""
        results: dict[str, dict[str, Any]] = {}
        docs: dict[str, list[DocResult]] = {}
        for task in self.tasks:
            scores = self._loglikelihoods(task)
            docs[task.name] = [
                DocResult(doc_id, [scores[r][0] for r in requests], [scores[r][1] for r in requests],
                          task.task.process_results(doc, [scores[r] for r in requests]))
                for (doc_id, doc), requests in zip(task.docs, task.requests_per_doc)
            ]
            results[task.name] = _aggregate(task.task, docs[task.name])
        for group in self.groups.values():
            results[group.name] = group.aggregate(results)
        return StepwiseResult(metrics_from_results(results), docs)

    def _loglikelihoods(self, task: _Task) -> list[tuple[float, bool]]:
        from transformers import DynamicCache

        device = self.model.device
        shared = None
        if task.prefix.shape[1]:
            shared = DynamicCache(config=self.model.config)
            self.model(input_ids=task.prefix.to(device), cache=shared, use_cache=True, logits_to_keep=1)
        scores: list[tuple[float, bool]] = [(0.0, False)] * task.n_requests
        for chunk in task.chunks:
            cache = None
            if shared is not None:
                rows = chunk.input_ids.shape[0]
                cache = DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v, *_ in shared],
                                     config=self.model.config)
            # logits only at the scored positions, flattened row by row: (scored positions, vocabulary)
            logits = self.model(input_ids=chunk.input_ids.to(device), cache=cache, use_cache=cache is not None,
                                logits_to_keep=chunk.scored.to(device)).logits
            # as HFLM: the log-softmax in the logits' dtype, a token greedy if it is its argmax, a request's sum
            # accumulated in float32 and rounded once to that dtype (as torch's sum does)
            logprobs = torch.log_softmax(logits[chunk.token_index.to(device)], dim=-1)
            tokens = chunk.tokens.to(device)
            token_logprobs = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
            misses = (logprobs.argmax(dim=-1) != tokens).to(torch.int64)
            n = len(chunk.requests)
            request = chunk.request.to(device)
            logprob = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, request, token_logprobs.float())
            logprob = logprob.to(token_logprobs.dtype)
            missed = torch.zeros(n, dtype=torch.int64, device=device).index_add_(0, request, misses)
            for r, lp, m in zip(chunk.requests, logprob.tolist(), missed.tolist()):
                scores[r] = (lp, m == 0)
        return scores


def _encode(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # TemplateLM.loglikelihood's tokenisation of one request, with HFLM's rules (an empty context is its prefix token)
    if context == "":
        tokens = lm.tok_encode(continuation, add_special_tokens=False)
        return ([lm.prefix_token_id], tokens) if lm.prefix_token_id != tokens[0] else (tokens[:1], tokens[1:])
    return lm._encode_pair(context, continuation)


def _common_prefix_length(rows: list[tuple[int, ...]]) -> int:
    first, last = min(rows), max(rows)  # the lexicographic extremes bound every row's common prefix
    return next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))


def _chunks(rows: list[tuple[int, ...]], requests: list[_Request], prefix: int, batch_size: int) -> list[_Chunk]:
    by_row: dict[int, list[int]] = {}
    for r, request in enumerate(requests):
        by_row.setdefault(request.row, []).append(r)
    # longest first, as HFLM orders them: rows of a chunk have similar lengths, so little padding
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        chunk_rows = order[start:start + batch_size]
        length = max(len(rows[i]) for i in chunk_rows) - prefix
        input_ids = torch.zeros(len(chunk_rows), length, dtype=torch.long)
        scored = torch.zeros(len(chunk_rows), length, dtype=torch.bool)
        positions, tokens, owner, chunk_requests = [], [], [], []
        for b, i in enumerate(chunk_rows):
            tail = rows[i][prefix:]
            input_ids[b, :len(tail)] = torch.tensor(tail)
            for r in by_row[i]:
                cont = requests[r].continuation
                first = len(tail) - len(cont)
                scored[b, first:len(tail)] = True
                positions += [(b, first + t) for t in range(len(cont))]
                tokens += cont
                owner += [len(chunk_requests)] * len(cont)
                chunk_requests.append(r)
        # the model returns the scored positions flattened row by row: each one's index there
        flat = torch.full(scored.shape, -1, dtype=torch.long)
        flat[scored] = torch.arange(int(scored.sum()))
        rows_, columns = zip(*positions)
        chunks.append(_Chunk(input_ids, scored, flat[list(rows_), list(columns)], torch.tensor(tokens),
                             torch.tensor(owner), chunk_requests))
    return chunks


def _aggregate(task, docs: list[DocResult]) -> dict[str, Any]:
    """lm-eval's per-task result: each metric's aggregation over the documents, keyed "<metric>,none"."""
    values: dict[str, list] = {}
    for doc in docs:
        for metric, value in doc.values.items():
            values.setdefault(metric, []).append(value)
    aggregation = task.aggregation()
    return {f"{metric},none": aggregation[metric](vs) for metric, vs in values.items()} | {"sample_len": len(docs)}

