"""The import graph runs one way: the inference core imports no evaluation, training, CLI or benchmark
code, and the package imports neither benchmarks nor tests; and no file edits ``sys.path``. Read with
``ast``: nothing is imported."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RULES = [  # (folder, packages no module under it may import)
    ("medusa/model", ("medusa.eval", "medusa.train", "medusa.inference", "benchmarks")),
    ("medusa", ("benchmarks", "tests")),
]


def imported_modules(path: Path, root: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved against its package under ``root``).

    ``from a import b`` yields ``a`` and ``a.b`` (b may be a module)."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = list(path.relative_to(root).parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(root: Path, rules=RULES) -> set[str]:
    """``"file imports module"`` for every import a rule forbids."""
    found = set()
    for folder, forbidden in rules:
        for path in (root / folder).rglob("*.py"):
            for name in imported_modules(path, root):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.add(f"{path.relative_to(root)} imports {name}")
    return found


def sys_path_uses(root: Path) -> list[str]:
    """``"file:line"`` of every ``sys.path`` in the repository's Python files (scripts must run without edits)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_package_imports_run_one_way():
    assert violations(REPO) == set()


@pytest.mark.parametrize("folder, source, bad", [
    ("medusa/model", "from ..eval import heads_accuracy\n", "medusa.eval.heads_accuracy"),
    ("medusa/model", "from ..eval.tree_builder import build_tree\n", "medusa.eval.tree_builder"),
    ("medusa/model", "import medusa.train.losses\n", "medusa.train.losses"),
    ("medusa/model", "from medusa import inference\n", "medusa.inference"),
    ("medusa/model", "def f():\n    from benchmarks.common import timed\n", "benchmarks.common"),
    ("medusa/eval", "from tests.tiny import tiny_model\n", "tests.tiny"),
    ("medusa", "import benchmarks\n", "benchmarks"),
])
def test_a_planted_violation_is_found(tmp_path, folder, source, bad):
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "planted.py").write_text(source)
    found = violations(tmp_path)
    assert f"{folder}/planted.py imports {bad}" in found and all(v.startswith(f"{folder}/planted.py ") for v in found)


@pytest.mark.parametrize("source", ["from . import tree\n", "from .eval_helpers import x\n", "import medusa.model\n",
                                    "from ..inference_free import y\n"])
def test_allowed_imports_are_not_flagged(tmp_path, source):
    (tmp_path / "medusa/model").mkdir(parents=True)
    (tmp_path / "medusa/model/ok.py").write_text(source)
    assert violations(tmp_path) == set()


def test_no_file_edits_sys_path(tmp_path):
    assert sys_path_uses(REPO) == []
    (tmp_path / "script.py").write_text("import sys\nif True:\n    sys.path.insert(0, '..')\n")
    assert sys_path_uses(tmp_path) == ["script.py:3"]
