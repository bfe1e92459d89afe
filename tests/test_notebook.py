"""examples/quickstart.ipynb, executed with nbclient in a kernel of this venv's Python against the
test server (its address goes in through FLOWDC_EXAMPLE_SERVER), so the example cannot rot."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

import flowdc
from flowdc.testserver import ImageServer

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def outputs(cell: nbformat.NotebookNode) -> tuple[str, set[str]]:
    text = "".join(o.get("text", "") for o in cell.get("outputs", []))
    kinds = {kind for o in cell.get("outputs", []) for kind in o.get("data", {})}
    return text, kinds


def test_quickstart_notebook_runs_against_the_test_server(
    fresh_server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = 24
    monkeypatch.setenv("FLOWDC_EXAMPLE_SERVER", fresh_server.url(""))
    monkeypatch.setenv("FLOWDC_EXAMPLE_OUTPUT", str(tmp_path / "dataset"))
    monkeypatch.setenv("FLOWDC_EXAMPLE_IMAGES", str(images))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))

    # only this venv's kernelspec (ipykernel installs `python3` into sys.prefix/share/jupyter);
    # its argv "python" is run as this interpreter: nothing is registered globally
    specs = KernelSpecManager(kernel_dirs=[str(Path(sys.prefix) / "share" / "jupyter" / "kernels")])
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = NotebookClient(
        notebook, km=kernel, timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    cells = notebook.cells
    assert outputs(cells[-1])[0].strip() == sys.executable
    texts = [outputs(cell)[0] for cell in cells]
    kinds = set().union(*(outputs(cell)[1] for cell in cells))
    assert any(f"images come from {fresh_server.url('')}" in text for text in texts)
    assert any(f"{images} of {images + 3} images" in text for text in texts)
    assert WIDGET in kinds, "no tqdm notebook bar in the download cell"
    assert "image/png" in kinds, "no images shown"
    # the dataset was made from the server the test passed in, and loads back
    assert sum(fresh_server.hits[f"/img/{i}.jpg"] for i in range(images)) >= images
    table = flowdc.results(tmp_path / "dataset")
    assert table.num_rows == images + 3
    assert table.column("status").to_pylist().count("success") == images
    assert (tmp_path / "example_urls.parquet").exists()
