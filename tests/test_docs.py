"""The documentation's code runs, and every public name has an API entry.

Each page's ```python blocks are executed in order in one namespace (one test per page).
Blocks fenced as ```py (still highlighted as Python) are not run: they show the full-size
calls whose budgets are too large for the test suite.
"""

import pathlib
import re

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "index.md", ROOT / "README.md"]
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(page: pathlib.Path) -> list[str]:
    return _BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page, monkeypatch, tmp_path):
    import jax

    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no ```python blocks")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    # As a reader runs them: in JAX's default float32 unless the page asks for float64
    # (the rest of the suite runs in float64, tests/conftest.py).
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        for i, block in enumerate(blocks):
            code = compile(block, f"{page.relative_to(ROOT)}[block {i}]", "exec")
            exec(code, namespace)
    finally:
        jax.config.update("jax_enable_x64", x64)


def _documented_names() -> set[str]:
    names = set()
    for page in (DOCS / "api").glob("*.md"):
        names.update(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.MULTILINE))
    return names


@pytest.mark.parametrize("module", ["omdx", "omdx.agents", "omdx.envs", "omdx.tabular"])
def test_public_names_documented(module):
    import importlib

    mod = importlib.import_module(module)
    documented = _documented_names()
    # A name re-exported by `omdx` from a subpackage counts if either path is documented.
    missing = []
    for name, value in vars(mod).items():
        if name.startswith("_") or isinstance(value, type(mod)):
            continue
        paths = {f"{module}.{name}"}
        origin = getattr(value, "__module__", None) or ""
        for sub in ("agents", "envs", "tabular"):
            if origin.startswith(f"omdx.{sub}") or origin.startswith(f"omdx._{sub}"):
                paths.add(f"omdx.{sub}.{name}")
        if not paths & documented:
            missing.append(name)
    assert not missing, f"public names of {module} without an `:::` API entry: {missing}"


def _parsers():
    """`(command, parser)` for every `omdx` command and tabular study."""
    import argparse

    from omdx.cli import build_parser

    def children(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    for name, parser in children(build_parser()).items():
        studies = children(parser)
        if studies:
            yield from ((f"{name} {study}", sub) for study, sub in studies.items())
        else:
            yield name, parser


def test_command_line_page_lists_every_option():
    page = (DOCS / "cli.md").read_text()
    missing = []
    for command, parser in _parsers():
        assert f"omdx {command.split()[0]}" in page, command
        for action in parser._actions:
            long = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            if long and f"`{long[0]}" not in page:
                missing.append(f"omdx {command} {long[0]}")
    assert not missing, f"options missing from docs/cli.md: {missing}"
    # And every option the page's tables list exists, in the commands of their section.
    training, rest = page.split("## The tabular studies")
    tabular, paper = rest.split("## Reproducing the paper")
    sections = [(training, ("demo", "train", "compare")), (tabular, ("tabular",))]
    for section, prefix in sections + [(paper, ("paper",))]:
        options = {
            option
            for command, parser in _parsers()
            if command.startswith(prefix)
            for action in parser._actions
            for option in action.option_strings
        }
        listed = re.findall(r"^\| `(--[a-z0-9-]+)", section, flags=re.MULTILINE)
        assert listed, "no option table found"
        unknown = sorted(set(listed) - options)
        assert not unknown, f"docs/cli.md lists options its commands lack: {unknown}"
