"""examples/quickstart.ipynb, executed with nbclient in a kernel of this venv's Python against the
test server (its address goes in through FLOWDC_EXAMPLE_SERVER), so the example cannot rot."""

from __future__ import annotations

import sys
import time
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


class Kernel:
    """A Jupyter kernel of this venv's Python, driven as a notebook front end drives it."""

    def __init__(self, cwd: Path) -> None:
        specs = KernelSpecManager(
            kernel_dirs=[str(Path(sys.prefix) / "share" / "jupyter" / "kernels")]
        )
        self.manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def start(self, code: str) -> str:
        return self.client.execute(code)

    def reply(self, msg_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if message["parent_header"].get("msg_id") == msg_id:
                return message["content"]
        raise TimeoutError(f"no reply to {msg_id}")

    def run(self, code: str) -> dict:
        return self.reply(self.start(code))

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def wait_for_request(server: ImageServer, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.in_flight, "no request reached the server"


def test_interrupting_the_kernel_stops_fetch_and_download_cleanly(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """Jupyter's stop button (SIGINT to the kernel's process group) during flowdc.fetch and
    flowdc.download: a KeyboardInterrupt soon, no request left open, the kernel still works, and
    the download resumes."""
    slow = [fresh_server.url(f"slow/2/{i}.jpg") for i in range(4)]
    kernel = Kernel(tmp_path)
    try:
        assert kernel.run("import flowdc, pyarrow as pa, pyarrow.parquet as pq")["status"] == "ok"
        msg_id = kernel.start(f"flowdc.fetch({fresh_server.url('slow/30/1.jpg')!r})")
        wait_for_request(fresh_server)
        interrupted = time.monotonic()
        kernel.manager.interrupt_kernel()
        reply = kernel.reply(msg_id, timeout=20)
        assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
        assert time.monotonic() - interrupted < 10
        deadline = time.monotonic() + 5
        while fresh_server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fresh_server.in_flight == 0, "the interrupted fetch left its request open"

        download = (
            f"pq.write_table(pa.table({{'url': {slow!r}}}), 'slow.parquet')\n"
            "result = flowdc.download(input='slow.parquet', output='ds', shard_size=2, "
            "processes=1, enable_rate_limiting=False, timeout=10)\n"
            "print(result.successful, result.total, result.ok)"
        )
        msg_id = kernel.start(download)
        wait_for_request(fresh_server)
        kernel.manager.interrupt_kernel()
        reply = kernel.reply(msg_id, timeout=60)
        assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
        assert "run the same command again to resume" in reply["evalue"]
        assert not list((tmp_path / "ds").glob("*_stats.json"))

        assert kernel.run(download)["status"] == "ok"  # the kernel lives on; the rerun resumes
        table = flowdc.results(tmp_path / "ds")
        assert table.column("status").to_pylist() == ["success"] * 4
    finally:
        kernel.close()
