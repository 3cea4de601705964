"""The layers hold, read from the code itself (DESIGN.md, "Layers"; README, "Where things are").

- povid_cli/core/ imports nothing of povid outside core/;
- stages/ imports from povid_cli only core and backends, and opens, writes, renames or deletes no file;
- povid_cli/backends/ imports only core and backends;
- povid_cli/commands/ only parses: it never touches the store, the file system, the runner or executors;
- no module is over ~400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 420  # "~400": a few lines of slack, not a second budget


def modules(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            povid = base.split(".")[0] in ("povid_cli", "stages")
            out += [(node.lineno, f"{base}.{a.name}" if povid else base) for a in node.names]
    return out


def povid_imports(path: Path) -> list[tuple[int, str]]:
    return [(n, m) for n, m in imported(path) if m.split(".")[0] in ("povid_cli", "stages")]


def offending(folder: str, allowed: tuple[str, ...]) -> list[str]:
    bad = []
    for path in modules(folder):
        for line, mod in povid_imports(path):
            if not any(mod == a or mod.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    return bad


def test_core_imports_nothing_above_it():
    assert offending("povid_cli/core", ("povid_cli.core",)) == []


def test_backends_import_only_core_and_backends():
    assert offending("povid_cli/backends", ("povid_cli.core", "povid_cli.backends")) == []


def test_stages_import_only_core_backends_and_stages():
    assert offending("stages", ("povid_cli.core", "povid_cli.backends", "stages")) == []


def test_commands_only_parse():
    """Commands call jobs; the store, the file system, the runner and the executors are the jobs' business."""
    forbidden = ("povid_cli.core.store", "povid_cli.core.fs", "povid_cli.core.runner", "povid_cli.core.executors",
                 "povid_cli.core.shard_task", "povid_cli.core.schedule")
    bad = [f"{p.relative_to(REPO)}:{n} imports {m}" for p in modules("povid_cli/commands")
           for n, m in povid_imports(p) if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert bad == []


# Calls that touch files: open(), os.* file functions, and names no other kind of object has (pathlib,
# pyarrow, povid's own Location and Dataset).
FILE_CALLS = {"unlink", "rmdir", "removedirs", "makedirs", "mkdir", "rmtree", "copyfile", "copytree", "write_text",
              "write_bytes", "read_text", "read_bytes", "touch", "write_table", "read_table", "write_parquet_atomic",
              "write_bytes_atomic", "write_json_atomic", "read_parquet", "read_parquet_rows", "read_json", "read_shard",
              "read_rows", "write_shard", "listdir", "scandir", "TemporaryDirectory", "NamedTemporaryFile", "mkstemp",
              "mkdtemp", "ParquetFile", "ParquetWriter"}
OS_CALLS = {"remove", "rename", "replace", "walk", "open", "truncate", "link", "symlink", "chmod", "utime"}
FILE_MODULES = {"shutil", "tempfile", "pathlib", "pyarrow.parquet", "glob", "fsspec", "pyarrow.fs"}


def file_io(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            on_os = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "os"
            if name in FILE_CALLS or (isinstance(f, ast.Name) and name == "open") or (on_os and name in OS_CALLS):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} calls {name}()")
    for line, mod in imported(path):
        if mod in FILE_MODULES or any(mod.startswith(m + ".") for m in FILE_MODULES):
            bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    return bad


def test_stages_do_no_file_io():
    assert [x for p in modules("stages") for x in file_io(p)] == []


@pytest.mark.parametrize("folder", ["povid_cli", "stages", "prompts"])
def test_no_module_is_over_about_400_lines(folder):
    long = {str(p.relative_to(REPO)): n for p in modules(folder) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The scanners above are not vacuous: a planted violation is found."""
    bad = REPO / "stages" / "_planted_violation.py"
    bad.write_text("import shutil\nfrom povid_cli.core.store import Dataset\nfrom povid_cli.synth import plan\n"
                   "def f(p):\n    with open(p) as fh:\n        return fh.read()\n")
    try:
        found = file_io(bad)
        assert any("open()" in x for x in found) and any("shutil" in x for x in found)
        assert offending("stages", ("povid_cli.core", "povid_cli.backends", "stages")) == [
            "stages/_planted_violation.py:3 imports povid_cli.synth.plan"]
    finally:
        bad.unlink()
