"""notebooks/analyze_minilm.ipynb runs top to bottom in a fresh kernel and draws its figures."""
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analyze_minilm.ipynb"


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernelspec that runs this interpreter, searched before any other.

    A user-level or system ``python3`` spec may point at another Python (without
    topoprune); ``JUPYTER_PATH`` comes first in Jupyter's search path.
    """
    import json

    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    spec_dir = Path(install(prefix=str(prefix), kernel_name="python3"))
    assert json.loads((spec_dir / "kernel.json").read_text())["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    # The kernel imports the topoprune under test (this checkout), even where the package is
    # importable here only through the working directory.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the notebook's %matplotlib inline still wins
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "python3"


def test_notebook_runs_and_shows_figures(python3_kernel, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=python3_kernel,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 5  # role CCDFs (in, out), block grid, trends, patterns
    tables = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert len(tables) >= 3  # per-matrix table and the summaries
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix  # the kernel ran this environment
