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

# (module, function that returns the parser)
BUILT_BY_FUNCTION = [
    ("duca_scripts.reproduce_table", "build_parser"),
    ("duca_scripts.benchmark_speed", "build_parser"),
    ("duca_scripts.pareto", "build_parser"),
    ("duca_scripts.profile_steps", "build_parser"),
    ("duca_scripts.gpu_bench", "build_parser"),
    ("duca_scripts.bench_row_efficiency", "build_parser"),
    ("duca_scripts.bench_attention_score", "build_parser"),
    ("duca_scripts.diffusers_example", "build_parser"),
    ("duca_scripts.make_reference_fixtures", "build_parser"),
    ("dit_duca.sample", "build_parser"),
    ("dit_duca.sample_ddp", "build_parser"),
    ("dit_duca.demo", "build_parser"),
    ("dit_duca.train", "build_parser"),
    ("dit_duca.digits_classifier", "build_parser"),
    ("duca_eval.coco", "build_parser"),
    ("duca_eval.fidelity", "build_parser"),
    ("duca_eval.imagenet", "build_parser"),
    ("opensora_duca.inference", "build_parser"),
    ("opensora_duca.vbench_launch", "build_parser"),
]
# (module, main) of the CLIs that build their parser inside main(argv): the parser is taken from its
# parse_args call, which is stopped before anything runs.
BUILT_IN_MAIN = [
    ("pixart_duca.scripts.inference", "main"),
    ("pixart_duca.scripts.inference_ddp", "main"),
    ("opensora_duca.vbench_table", "main"),
]
# Files that build a parser and are not checked, with the reason.
EXCLUDED = {
    # Runs in VBench's own environment, without the project installed: it cannot import duca_common's formatter.
    "Open-Sora-DuCa/eval/vbench/calc_vbench.py",
}
CLIS = BUILT_BY_FUNCTION + BUILT_IN_MAIN


class _ParserBuilt(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser built")
        self.parser = parser


def parser_of(module: str, function: str, monkeypatch) -> argparse.ArgumentParser:
    make = getattr(importlib.import_module(module), function)
    if function != "main":
        return make()

    def stop(self, *args, **kwargs):
        raise _ParserBuilt(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_ParserBuilt) as built:
        make([])
    return built.value.parser


@pytest.mark.parametrize(("module", "function"), CLIS, ids=[m for m, _ in CLIS])
def test_every_option_has_help_and_the_shared_formatter(module, function, monkeypatch):
    parser = parser_of(module, function, monkeypatch)
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
    listed = {module for module, _ in CLIS}
    found = set()
    for folder in PACKAGE_DIRS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() not in EXCLUDED and _builds_a_parser(path):
                found.add(_module_name(path))
    assert found - listed == set(), f"CLIs missing from tests/test_cli_help.py: {sorted(found - listed)}"
    assert listed - found == set(), f"listed modules that build no parser: {sorted(listed - found)}"
