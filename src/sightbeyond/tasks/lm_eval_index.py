"""The one place sightbeyond reaches past lm-eval's public API: its task index, to read an official task's YAML, to
tell groups and tags from tasks, and to hand a task a config of our own (local documents, the paper's shots).
lm-eval keeps these modules private (`lm_eval.tasks._index`, `_yaml_loader`); this code is written against the version
pinned in requirements.txt (tests/test_nlp_eval.py exercises it), and a release without them fails here with what to
install, not deep inside an evaluation."""

from __future__ import annotations

import dataclasses
from importlib.metadata import version
from typing import Any

TESTED = "0.4.13"


class UnsupportedLmEval(RuntimeError):
    pass


def _private():
    try:
        from lm_eval.tasks._index import Kind
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError as err:
        raise UnsupportedLmEval(f"lm_eval {version('lm_eval')} has no {err.name}: sightbeyond reads lm-eval's task "
                                f"index as of {TESTED}; pip install lm_eval=={TESTED}") from None
    return Kind, load_yaml


def official_config(index, name: str, resolve_functions: bool = True) -> dict[str, Any]:
    """The task's YAML as lm-eval ships it (`!function` tags resolved to callables, or left as strings)."""
    return _private()[1](index[name].yaml_path, resolve_func=resolve_functions)


def set_config(index, name: str, config: dict[str, Any]) -> None:
    """Task `name` is built from `config` instead of its YAML file."""
    index[name] = dataclasses.replace(index[name], yaml_path=None, cfg=config)


def leaves(index, name: str) -> list[str]:
    """The tasks a task, group or tag of lm-eval's index evaluates."""
    kind, entry = _private()[0], index[name]
    if entry.kind == kind.GROUP:
        children = [c if isinstance(c, str) else c.get("task") or c["group"] for c in entry.cfg["task"]]
        return [leaf for child in children for leaf in leaves(index, child)]
    if entry.kind == kind.TAG:
        return [leaf for task in sorted(entry.tags) for leaf in leaves(index, task)]
    return [name]
