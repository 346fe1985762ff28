"""The front door and the docs: size, layout rules, and every command they show parses."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def isacir_commands(text: str, program: str = "isacir") -> list[list[str]]:
    """argv (after the program name) of every ``program`` command in the bash blocks of a page."""
    commands = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
            lexer.whitespace_split = True
            parts: list[list[str]] = [[]]
            for token in lexer:
                if token in (";", "&&", "||", "|"):
                    parts.append([])
                else:
                    parts[-1].append(token)
            for words in parts:
                words = words[: words.index(">")] if ">" in words else words
                if words and words[0].endswith(program) and words[0].rsplit("/", 1)[-1] == program:
                    commands.append(words[1:])
                elif program == "isacir" and words and words[0] == "torchrun" and "isacir.cli" in words:
                    commands.append(words[words.index("isacir.cli") + 1 :])
    return commands


def parse(argv: list[str], program: str = "isacir") -> None:
    """Parse like the CLI would (option names, types, choices, required ones) without running."""
    if program == "isacir-lab":
        from isacir_lab.cli import app
    else:
        from isacir.cli import app

    cmd = typer.main.get_command(app)  # typer ships its own copy of click: duck-type, don't isinstance
    args, name = list(argv), program
    while hasattr(cmd, "resolve_command"):
        ctx = cmd.make_context(name, args, resilient_parsing=False)
        name, cmd, args = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        if cmd is None:
            raise UsageError(f"no such command {name!r}")
    cmd.make_context(name, args, resilient_parsing=False)


class UsageError(Exception):
    def format_message(self) -> str:
        return str(self)


def is_usage_error(exc: BaseException) -> bool:
    """A click usage error (typer's copy of click or the real one): it has format_message()."""
    return hasattr(exc, "format_message") and type(exc).__name__ != "Exit"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    for needle in ("make demo", "make test", "```python", "Quality on Shapes-CIR", "docs/index.md"):
        assert needle in readme
    assert readme.index("```python") < len(readme) // 3  # the quickstart is near the top


def test_operations_pages_are_short_and_the_front_door_rows_too():
    """Pages for the people who run it: each operations page a task of at most 12 KB, and each
    row of the README's "What works" a line, not a report."""
    for page in sorted((ROOT / "docs" / "operations").glob("*.md")):
        assert len(page.read_bytes()) <= 12_000, page.name
    readme = (ROOT / "README.md").read_text()
    works = readme[readme.index("## What works") : readme.index("## Quality on Shapes-CIR")]
    rows = [line for line in works.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert len(rows) >= 10 and all(len(row) <= 250 for row in rows), max(rows, key=len)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("program", ["isacir", "isacir-lab"])
def test_every_command_shown_parses(page, program):
    commands = isacir_commands(page.read_text(), program)
    for argv in commands:
        try:
            parse(argv, program)
        except Exception as exc:
            if type(exc).__name__ == "Exit":
                continue  # --version and friends
            assert not is_usage_error(exc), f"{page.name}: `{program} {' '.join(argv)}`: {exc.format_message()}"
            raise


def test_the_parser_check_catches_a_wrong_command():
    for argv in (
        ["train", "--no-such-option", "1"],
        ["gallery", "rm", "not-an-id", "--gallery", "g"],
        ["search", "-k", "3"],
        ["no-such-verb"],
        ["train", "--lr", "fast"],
    ):
        with pytest.raises(Exception) as info:
            parse(argv)
        assert is_usage_error(info.value), argv
    with pytest.raises(Exception) as info:  # a lab verb is not the product's
        parse(["bench", "shapes", "--seed", "0"])
    assert is_usage_error(info.value)
    parse(["bench", "shapes", "--seed", "0"], "isacir-lab")
    parse(["search", "--gallery", "g", "-k", "3"])
    assert isacir_commands("```bash\nisacir search --gallery g \\\n    -k 3  # c\n```\n") == [
        ["search", "--gallery", "g", "-k", "3"]
    ]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile_and_call_real_apis(page):
    import isacir
    from isacir.foundation import Foundation
    from isacir.query import QueryEncoder

    known = set(dir(Foundation)) | set(dir(QueryEncoder)) | set(dir(isacir)) | {"argmax", "T"}
    for block in _blocks(page.read_text(), "python"):
        tree = ast.parse(block)
        called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        ours = {c for c in called if c.startswith(("encode", "from_pretrained", "preprocess", "match", "embed"))}
        assert ours <= known, f"{page.name}: unknown API {sorted(ours - known)}"


def test_no_comment_or_docstring_points_at_the_readme():
    """History lives in docs/experiments and CHANGELOG.md; code that cites README sections breaks when they move."""
    offenders = []
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        if path.parent.name == "results" and path.parent.parent.name == "isacir_lab":
            continue  # the renderer writes README's generated blocks, so it names the file
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bREADME\b", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert offenders == []


def test_the_product_never_loads_the_lab():
    """Every module of the product imported in one process: no module of isacir_lab comes along
    (the lab imports the product, never the reverse)."""
    code = """
import importlib, pkgutil, sys
import isacir
names = [m.name for m in pkgutil.walk_packages(isacir.__path__, "isacir.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
lab = sorted(m for m in sys.modules if m == "isacir_lab" or m.startswith("isacir_lab."))
print(len(names), lab)
assert len(names) > 90 and not lab, lab
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_every_import_inside_a_function_resolves():
    """Imports inside functions (kept lazy on purpose) run only when the function does, so a name
    moved to another module breaks them silently; every one in the product and the lab must name
    something its module has."""
    code = """
import ast, importlib, pathlib
bad = []
for root in ("src/isacir", "src/isacir_lab"):
    for p in pathlib.Path(root).rglob("*.py"):
        parts = list(p.relative_to("src").with_suffix("").parts)
        pkg = parts[:-1]
        for n in ast.walk(ast.parse(p.read_text())):
            if not isinstance(n, ast.ImportFrom):
                continue
            mod = ".".join(pkg[: len(pkg) - n.level + 1] + ([n.module] if n.module else [])) if n.level else n.module
            if not mod or not mod.startswith("isacir"):
                continue
            m = importlib.import_module(mod)
            for a in n.names:
                if not hasattr(m, a.name):
                    try:
                        importlib.import_module(mod + "." + a.name)
                    except ImportError:
                        bad.append(f"{p}:{n.lineno}: {mod} has no {a.name}")
print(bad)
assert not bad
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("isacir.evaluation", "isacir.training"),
        ("isacir.gallery", "isacir.training"),
        ("isacir.edge", "torch"),
        ("isacir.data", "torch"),
    ],
)
def test_layout_keeps_its_import_rules(module, forbidden):
    code = (
        f"import {module}, sys; bad = sorted(m for m in sys.modules if m == {forbidden!r} "
        f"or m.startswith({forbidden!r} + '.')); print(bad); assert not bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.lab
def test_generated_results_are_up_to_date():
    proc = subprocess.run(
        [sys.executable, "-m", "isacir_lab.cli", "render", "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr


def _module_level_imports(path: Path, package: str) -> set[str]:
    """isacir modules a file imports at module level (function-level imports are lazy by design)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks never run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update([target, *names])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("isacir")}


def test_no_circular_imports_between_modules():
    src = ROOT / "src"
    modules = {}
    for path in (src / "isacir").rglob("*.py"):
        rel = path.relative_to(src).with_suffix("")
        is_pkg = rel.name == "__init__"
        name = ".".join(rel.parent.parts if is_pkg else rel.parts)
        modules[name] = (path, name if is_pkg else name.rsplit(".", 1)[0], is_pkg)
    graph = {}
    for name, (path, package, is_pkg) in modules.items():
        if is_pkg:
            continue  # a package importing its own submodules is how packages work
        graph[name] = {m for m in _module_level_imports(path, package) if m in modules and not modules[m][2]}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 40  # the walk saw the package
