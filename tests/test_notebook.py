"""The quickstart notebook runs top to bottom on CPU: it trains a tiny model through run.py, writes a line
and a page in a shipped style, and plots the run's metrics; nothing is written outside its folder."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


def _train_runs() -> set[Path]:
    return set((ROOT / "outputs" / "train").glob("*"))


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("IMURU_PL_QUICKSTART_DIR", str(tmp_path))  # tiny model, outputs under tmp_path only
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures as PNG
    before = _train_runs()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel is the test's own Python (ipykernel from the same environment); any failing cell raises.
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    assert (tmp_path / "tiny_run" / "model" / "config.json").is_file()
    line, page = Image.open(tmp_path / "line.png"), Image.open(tmp_path / "page.png")
    assert line.height == 64 and line.width >= 8
    assert page.height > 2 * 64, "the paragraph should wrap into a page of several lines"
    assert _train_runs() == before, "quick mode must not write into outputs/"

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if {"image/png", "image/jpeg"} & set(out.get("data", {}))]
    # style | line, the page, the held-out grid, the metric bars, the loss curves
    assert len(images) >= 5, len(images)
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "Trained in" in text and "generated" in text
