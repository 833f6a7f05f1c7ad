"""`python run.py task=heldout run_dir=<run> out=<dir>`: a finished run's held-out lines written and scored
again with the run's own config and exported model (the tiny run of conftest.py)."""

import json
from pathlib import Path

import torch
from PIL import Image

from imuru_pl.pipeline import ImuruPipeline

from cli_helpers import run_cli
from test_train_and_generate import reader_of_one_letter


def heldout(tiny_run: Path, tmp_path: Path, out: Path | None, *overrides: str):
    """task=heldout on the tiny run; its own log goes to tmp_path/command (the default out)."""
    where = [f"out={out}"] if out is not None else []
    return run_cli("task=heldout", f"run_dir={tiny_run}", *where, *overrides, "print_config=false",
                   f"hydra.run.dir={tmp_path / 'command'}")


def figures(out: Path) -> dict:
    return json.loads((out / "heldout_figures.json").read_text())


def test_the_width_head_is_fitted_again_and_the_refitted_model_scored_again(tiny_run: Path, tmp_path: Path):
    exported = ImuruPipeline.from_pretrained(tiny_run / "model").model.state_dict()
    refit = tmp_path / "refit"
    result = heldout(tiny_run, tmp_path, refit, "duration_fit.steps=2", "duration_fit.val_batches=1",
                     "heldout.num_lines=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert figures(refit)["duration_fit"]["steps"] == 2
    assert figures(refit)["overrides"] == ["duration_fit.steps", "duration_fit.val_batches",
                                           "heldout.num_lines"]
    refitted = ImuruPipeline.from_pretrained(refit / "model").model.state_dict()
    moved = {k for k, v in refitted.items() if k not in exported or not torch.equal(v, exported[k])}
    assert moved and all("width_planner" in k for k in moved), "only the width head is fitted again"
    for model, code in [(refit / "model", 0), (tmp_path / "nowhere", 2)]:  # scored again, nothing fitted
        result = heldout(tiny_run, tmp_path, tmp_path / "again", f"model_dir={model}", "heldout.num_lines=2")
        assert result.returncode == code, result.stderr[-3000:]
    assert "Model directory not found" in result.stdout + result.stderr
    again = figures(tmp_path / "again")
    assert again["model"] == str(refit / "model") and "duration_fit" not in again
    assert not (tmp_path / "again" / "model").exists(), "nothing fitted, nothing saved"
    report = json.loads((tmp_path / "again" / "heldout" / "evaluation.json").read_text())["generated"]
    assert report["n_fake"] == 2


def test_heldout_lines_are_written_again_with_the_style_texts(tiny_run: Path, tmp_path: Path):
    result = heldout(tiny_run, tmp_path, None, "heldout.style_text_widths=true")  # out: the command's own dir
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "command" / "heldout" / "evaluation.json").read_text())["generated"]
    assert report["style_text_widths"] is True and report["n_fake"] == 4
    assert 0.0 <= report["width_within_15"] <= 1
    original = json.loads((tiny_run / "heldout" / "evaluation.json").read_text())["generated"]
    assert original["style_text_widths"] is False


def test_bad_input_is_one_sentence_and_writes_nothing(tiny_run: Path, tmp_path: Path):
    bad, command = tmp_path / "bad", f"hydra.run.dir={tmp_path / 'command'}"
    results = {
        "names the run itself": heldout(tiny_run, tmp_path, tiny_run),
        "weights is trained or average": heldout(tiny_run, tmp_path, bad, "weights=both"),
        "nosuch": heldout(tiny_run, tmp_path, bad, "nosuch.key=1"),  # refused by Hydra as it composes
        "holds no .hydra/config.yaml": run_cli("task=heldout", f"run_dir={tmp_path}", f"out={bad}", command),
        "task=heldout needs run_dir=": run_cli("task=heldout", f"out={bad}", command),
    }
    for message, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output, output[-2000:]
        assert "Traceback" not in output
    assert not (tmp_path / "bad").exists() and not (tiny_run / "heldout_figures.json").exists()


def test_heldout_lines_score_a_checkpoints_trained_weights_or_their_average(tiny_run: Path, tmp_path: Path):
    last = tiny_run / "checkpoints" / "last.ckpt"

    def score(weights: str, checkpoint: Path = last, out: str = ""):
        return heldout(tiny_run, tmp_path, tmp_path / (out or weights), f"checkpoint={checkpoint}",
                       f"weights={weights}")

    for weights in ("trained", "average"):
        result = score(weights)
        assert result.returncode == 0, result.stderr[-3000:]
        assert figures(tmp_path / weights)["weights"] == weights
    lines = [sorted((tmp_path / w / "heldout" / "generated").rglob("*.png")) for w in ("trained", "average")]
    assert len(lines[0]) == len(lines[1]) == 4
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(*lines)), "the two weight sets write alike"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("ema_model.")}
    torch.save(state, tmp_path / "plain.ckpt")
    result = score("average", tmp_path / "plain.ckpt", out="plain")
    assert result.returncode == 2 and "holds no moving average" in result.stdout + result.stderr
    assert not (tmp_path / "plain").exists(), "nothing is written for a refused checkpoint"


def test_heldout_lines_with_a_style_reader_report_its_reading(tiny_run: Path, tmp_path: Path):
    reader = reader_of_one_letter(tmp_path / "reader")
    result = heldout(tiny_run, tmp_path, tmp_path / "read", f"heldout.style_reader={reader}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "read" / "heldout" / "evaluation.json").read_text())["generated"]
    assert report["n_fake"] == 4 and report["style_reader"] == str(reader)
    assert 0.7 < report["style_reader_cer"] <= 1.0, "one letter read for whole style lines"
    both = heldout(tiny_run, tmp_path, tmp_path / "both", f"heldout.style_reader={reader}",
                   "heldout.style_text_widths=true")
    assert both.returncode == 2 and "choose one" in both.stdout + both.stderr
    nothing = tmp_path / "nothing"
    missing = heldout(tiny_run, tmp_path, tmp_path / "missing", f"heldout.style_reader={nothing}")
    assert missing.returncode == 2 and "heldout.style_reader=" in missing.stdout + missing.stderr


def test_a_model_that_carries_a_reader_reads_its_style_lines_unless_told_not_to(tiny_run: Path, tmp_path: Path):
    from imuru_pl.models.reader import LineReader

    pipeline = ImuruPipeline.from_pretrained(tiny_run / "model")
    pipeline.reader = LineReader.from_pretrained(reader_of_one_letter(tmp_path / "reader"))
    model_dir = pipeline.save_pretrained(tmp_path / "with_reader")
    reports = {}
    for name, extra in (("own", ()), ("off", ("heldout.style_reader=false",))):
        result = heldout(tiny_run, tmp_path, tmp_path / name, f"model_dir={model_dir}", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[name] = json.loads((tmp_path / name / "heldout" / "evaluation.json").read_text())["generated"]
    assert reports["own"]["style_reader"] == "the model's own (reader/)" and reports["own"]["style_reader_cer"] > 0.7
    assert "style_reader" not in reports["off"]
    lines = [sorted((tmp_path / n / "heldout" / "generated").rglob("*.png")) for n in ("own", "off")]
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(*lines)), "the reading changes the widths"


def test_another_model_writes_the_same_heldout_lines_beside_the_runs_own(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "compared"
    result = heldout(tiny_run, tmp_path, out, f"heldout.compare_with={tiny_run / 'model'}", "heldout.num_lines=2")
    assert result.returncode == 0, result.stderr[-3000:]
    root = out / "heldout"
    report = json.loads((root / "evaluation.json").read_text())
    assert report["compared"]["model"] == str(tiny_run / "model") and report["compared"]["n_fake"] == 2
    own, other = sorted((root / "generated").rglob("*.png")), sorted((root / "compared").rglob("*.png"))
    assert len(own) == len(other) == 2
    for mine, theirs in zip(own, other):  # the same model from the same style lines: the same pixels
        assert mine.relative_to(root / "generated") == theirs.relative_to(root / "compared")
        assert mine.read_bytes() == theirs.read_bytes()
    assert all(report["compared"][k] == report["generated"][k] for k in ("hwd", "fid", "stop_rate", "width_error"))
    plain = tmp_path / "plain"
    assert heldout(tiny_run, tmp_path, plain, "heldout.num_lines=2").returncode == 0
    with Image.open(root / "grid.png") as beside, Image.open(plain / "heldout" / "grid.png") as alone:
        assert beside.height == alone.height and beside.width > alone.width, "one more column"
    missing = heldout(tiny_run, tmp_path, tmp_path / "bad", f"heldout.compare_with={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "Model directory not found" in missing.stdout + missing.stderr
    assert not (tmp_path / "bad").exists()
