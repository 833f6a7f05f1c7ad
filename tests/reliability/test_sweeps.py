"""`run.py -m`: every job in its own directory, and a summary of every job's final metrics in the sweep
directory, failed jobs included (the sweep goes on after one fails, then exits with status 2)."""

from __future__ import annotations

import json

from reliability_helpers import TINY, run_cli


def test_a_two_job_sweep_leaves_a_summary_of_final_metrics(tmp_path, trained_run):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *TINY,
        f"vae.pretrained={trained_run / 'vae'}",
        "model.style_enc=mean,full",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for job in ("0", "1"):
        assert (sweep / job / "model" / "model.safetensors").is_file() and (
            sweep / job / "train.log"
        ).is_file()
    jobs = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [j["job"] for j in jobs] == [0, 1] and all(j["status"] == "completed" for j in jobs)
    assert [o for o in jobs[1]["overrides"] if o.startswith("model.style_enc")] == ["model.style_enc=full"]
    for job in jobs:
        assert job["metrics"]["global_step"] == 6 and job["metrics"]["metrics/val/loss"] > 0
        assert job["output_dir"].endswith(f"sweep/{job['job']}")
    table = (sweep / "summary.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| job"))
    assert "metrics/val/loss" in header and "global_step" in header
    rows = [line for line in table if line.startswith(("| 0 ", "| 1 "))]
    assert len(rows) == 2 and "model.style_enc=mean" in rows[0] and "model.style_enc=full" in rows[1]


def test_failed_jobs_are_recorded_the_sweep_goes_on_and_exits_2(tmp_path):
    """DDP inside a sweep is refused per job (each rank would replay the sweep); job 1 still runs after job 0."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "model.style_enc=mean,full",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 2
    assert (
        "re-launch the whole sweep" in result.stdout.strip().splitlines()[-1]
    )  # the last word is the reason
    jobs = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert [(j["job"], j["status"]) for j in jobs] == [(0, "failed"), (1, "failed")]
    assert all(j["error"].startswith("A sweep (-m) runs its jobs one after another") for j in jobs)
    assert "failed: A sweep (-m)" in (sweep / "summary.md").read_text()
