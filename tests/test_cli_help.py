"""Every command line says what each of its options does: ``--help`` shows a help text for every option
(argparse shows neither purpose nor default for an option without one), through the project's one formatter
(``duca_common.runtime.HelpFormatter``: usage examples keep their lines, "(default: X)" only where it says
something).

The CLIs are listed by hand, so a new one is a conscious addition; ``test_every_cli_is_listed`` finds every
``argparse.ArgumentParser(...)`` in the project's packages and fails on one missing here.
"""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

from duca_common.runtime import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]
# pyproject.toml [tool.setuptools] package-dir: import name -> folder
PACKAGE_DIRS = {"duca_common": "common", "dit_duca": "DiT-DuCa", "pixart_duca": "PixArt-alpha-DuCa",
                "duca_eval": "eval", "duca_scripts": "scripts", "opensora_duca": "Open-Sora-DuCa"}

# every CLI module; each has a build_parser() returning its parser
CLIS = [
    "duca_scripts.reproduce_table",
    "duca_scripts.benchmark_speed",
    "duca_scripts.pareto",
    "duca_scripts.profile_steps",
    "duca_scripts.gpu_bench",
    "duca_scripts.bench_row_efficiency",
    "duca_scripts.bench_attention_score",
    "duca_scripts.diffusers_example",
    "duca_scripts.make_reference_fixtures",
    "dit_duca.sample",
    "dit_duca.sample_ddp",
    "dit_duca.demo",
    "dit_duca.train",
    "dit_duca.digits_classifier",
    "duca_eval.coco",
    "duca_eval.fidelity",
    "duca_eval.imagenet",
    "opensora_duca.inference",
    "opensora_duca.vbench_launch",
    "opensora_duca.vbench_table",
    "pixart_duca.scripts.inference",
    "pixart_duca.scripts.inference_ddp",
]
# Files that build a parser and are not checked, with the reason.
EXCLUDED = {
    # Runs in VBench's own environment, without the project installed: it cannot import duca_common's formatter.
    "Open-Sora-DuCa/eval/vbench/calc_vbench.py",
}


@pytest.mark.parametrize("module", CLIS)
def test_every_option_has_help_and_the_shared_formatter(module):
    parser = importlib.import_module(module).build_parser()
    assert parser.formatter_class is HelpFormatter, f"{module}: formatter_class={parser.formatter_class}"
    # argparse.SUPPRESS (hidden test hooks) counts as help: the option is deliberately left out of --help
    missing = [action.option_strings[0] if action.option_strings else action.dest for action in parser._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"{module}: options without help text: {', '.join(missing)}"
    parser.format_help()                     # every help text renders (a stray '%' would raise here)


def _module_name(path: Path) -> str | None:
    rel = path.relative_to(ROOT)
    for package, folder in PACKAGE_DIRS.items():
        if rel.parts[0] == folder:
            return ".".join((package, *rel.with_suffix("").parts[1:]))
    return None


def _builds_a_parser(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name == "ArgumentParser":
                return True
    return False


def test_every_cli_is_listed():
    """A module of the project's packages that builds an ArgumentParser is in CLIS or EXCLUDED."""
    listed = set(CLIS)
    found = set()
    for folder in PACKAGE_DIRS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() not in EXCLUDED and _builds_a_parser(path):
                found.add(_module_name(path))
    assert found - listed == set(), f"CLIs missing from tests/test_cli_help.py: {sorted(found - listed)}"
    assert listed - found == set(), f"listed modules that build no parser: {sorted(listed - found)}"


def test_module_docstrings_with_continuation_lines_are_raw():
    """A usage example's `\\`-newline in a plain docstring joins the two lines (Python reads it as a line
    continuation), so the --help that shows the docstring runs them together: write them raw (or as `\\\\`)."""
    joined = []
    for folder in PACKAGE_DIRS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            doc = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
            if doc is None or not isinstance(doc.value, ast.Constant) or not isinstance(doc.value.value, str):
                continue
            literal = ast.get_source_segment(source, doc.value) or ""
            # each `\`-newline of the source that the string itself lacks was read as a line continuation
            if literal.count("\\\n") != doc.value.value.count("\\\n"):
                joined.append(path.relative_to(ROOT).as_posix())
    assert joined == [], f"make these module docstrings raw (r\"\"\"...) or escape the backslash: {joined}"
