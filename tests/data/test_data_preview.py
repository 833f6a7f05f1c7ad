"""`task=preview` writes a grid of writers (style line, then target lines) under the run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from imuru_pl.tasks import preview

ROOT = Path(__file__).resolve().parents[2]


def test_preview_has_one_row_per_writer_with_its_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("IMURU_PL_ROOT", str(ROOT))
    overrides = [
        "task=preview",
        f"paths.output_dir={tmp_path}",
        "preview.writers=3",
        "preview.lines_per_writer=2",
        "data.fonts=[fontpkg_caveat,fontpkg_delius,fontpkg_kalam,fontpkg_satisfy,fontpkg_zeyada]",
        "data.writers_per_font=2",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=overrides)
    result = preview.run(cfg)
    path = Path(result["preview"])
    assert path == tmp_path / "preview.png"
    grid = np.asarray(Image.open(path).convert("RGB"))
    row_px = preview.LABEL_PX + 64 + preview.GAP
    assert grid.shape[0] == preview.GAP + 3 * row_px
    datamodule = preview.instantiate(cfg.data)
    writers = preview.spread_writers(datamodule.writers("train"), 3)
    assert len({w.font for w in writers}) == 2  # two training families, spread round-robin
    for r, writer in enumerate(writers):
        top = preview.GAP + r * row_px + preview.LABEL_PX
        x = preview.GAP
        for index, expected in enumerate(
            [datamodule.line(writer, 0).paper_array()]
            + [np.repeat(datamodule.line(writer, i).clean_array()[..., None], 3, 2) for i in (1, 2)]
        ):
            width = expected.shape[1]
            assert np.array_equal(grid[top : top + 64, x : x + width], expected), (writer.id, index)
            x += width + preview.GAP


def test_the_command_line_writes_the_preview(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "task=preview", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "preview.png").is_file()
    assert "preview.png" in (tmp_path / "preview.log").read_text()
