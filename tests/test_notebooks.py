"""The notebooks run top to bottom on CPU (executed with nbclient, cwd = notebooks/)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from medusa.demo import DEMO_HEADS_DIR

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO_ROOT, "notebooks")


def needs_demo(name: str):
    if name == "01_introduction.ipynb":
        return [pytest.mark.slow, pytest.mark.skipif(not os.path.isdir(DEMO_HEADS_DIR),
                                                     reason="the trained demo heads are not in the repository yet")]
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_demo(n)) for n in sorted(os.listdir(NOTEBOOKS))
                                  if n.endswith(".ipynb")])
def test_notebook_runs(name, monkeypatch):
    path = os.path.join(NOTEBOOKS, name)
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in nb.cells if cell.cell_type == "code"), f"{name} is committed with outputs"
    # The kernel inherits the environment: import this checkout's medusa, draw without a display.
    monkeypatch.setenv("PYTHONPATH", REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
