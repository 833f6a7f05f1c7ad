"""`task=benchmark`: a miniature styled-HTG set (the HWD library's format, 3 authors with 2 style lines each,
lines rendered here) written by the tiny trained model of conftest.py and scored; a killed benchmark goes
on without writing again what it wrote; `task=synthetic_set` makes the test writers such a set."""

import json
import signal
import time
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from imuru_pl.data.shtg import ShtgSample, read_set, write_set
from imuru_pl.metrics.report import BENCHMARK_COLUMNS
from imuru_pl.visual import tensor_to_image

from cli_helpers import run_cli, start_cli

TEXTS = ["the river bend", "Seven days", "a quiet lane", "over the hill"]


@pytest.fixture(scope="module")
def mini_set(tiny_run: Path, tmp_path_factory) -> tuple[Path, Path]:
    """3 authors (the tiny run's first 3 test writers) x 4 target lines, each styled by the author's 2 style
    lines; images in IAM's nested layout, gray targets and RGB styles. One sample's real line is missing
    and one text has a letter outside the charset."""
    root = tmp_path_factory.mktemp("mini_set")
    data = OmegaConf.load(tiny_run / ".hydra" / "config.yaml").data
    datamodule = instantiate(data)
    samples = []
    for a, writer in enumerate(datamodule.writers("test")[:3]):
        folder = root / "lines" / f"a0{a}" / f"a0{a}-000"
        folder.mkdir(parents=True)
        for s, text in enumerate(["style line one", "another style"]):
            tensor_to_image(datamodule.render(text, writer).styled).save(folder / f"a0{a}-000-s{s}.png")
        for t, text in enumerate(TEXTS):
            gen_id = f"a0{a}-000-{t:02d}"
            if (a, t) != (2, 3):  # this real line is missing from the image folder
                tensor_to_image(datamodule.render(text.replace("é", "e"), writer).clean).save(folder / f"{gen_id}.png")
            written = "Seven cafés" if (a, t) == (0, 1) else text
            samples.append(ShtgSample(written, gen_id, f"{writer.id}/{gen_id}.png",
                                      (f"a0{a}-000-s0", f"a0{a}-000-s1")))
    return write_set(root / "shtg_mini_lines.json.gz", samples), root / "lines"


def benchmark(tiny_run: Path, mini: tuple[Path, Path], out: Path, *overrides: str):
    return run_cli("task=benchmark", f"model_dir={tiny_run / 'model'}", f"set={mini[0]}", f"images={mini[1]}",
                   f"out={out}", "print_config=false", *overrides, f"hydra.run.dir={out.parent / 'command'}")


def test_a_set_is_generated_scored_and_reported_in_the_reports_columns(tiny_run, mini_set, tmp_path):
    out = tmp_path / "bench"
    result = benchmark(tiny_run, mini_set, out, "num_style_samples=2", "batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "benchmark.json").read_text())
    assert report["samples"] == 12 and report["written"] == 11 and report["generated_now"] == 11
    assert report["skipped"] == {"missing image": 1} and report["outside_charset"] == 1
    assert report["num_style_samples"] == 2 and report["precision"] == "32"
    for key, _, _ in BENCHMARK_COLUMNS:
        assert isinstance(report[key], float), f"{key} = {report[key]!r}"
    assert report["protocol"] == {"hwd": False, "fid": False, "cer": False}  # the offline backbones, said so
    table = (out / "benchmark.md").read_text()
    assert all(label in table for _, label, _ in BENCHMARK_COLUMNS) and "relative only" in table
    assert table in result.stdout + result.stderr  # printed as well as saved
    generated = json.loads((out / "generated" / "transcriptions.json").read_text())
    real = json.loads((out / "real" / "transcriptions.json").read_text())
    assert sorted(generated) == sorted(real) and len(generated) == 11
    assert all((out / folder / dst).is_file() for dst in generated for folder in ("generated", "real"))
    dst = next(d for d in generated if d.endswith("a00-000-01.png"))
    assert generated[dst] == "Seven cafes" and real[dst] == "Seven cafés"  # asked in the charset, read as set


def test_a_model_that_carries_a_reader_writes_the_set_at_the_widths_it_reads(tiny_run, mini_set, tmp_path):
    from imuru_pl.models.reader import LineReader
    from imuru_pl.pipeline import ImuruPipeline
    from test_train_and_generate import reader_of_one_letter

    pipeline = ImuruPipeline.from_pretrained(tiny_run / "model")
    pipeline.reader = LineReader.from_pretrained(reader_of_one_letter(tmp_path / "reader"))
    model = pipeline.save_pretrained(tmp_path / "with_reader")
    widths = {}
    for name, extra in (("own", ()), ("off", ("style_reader=false",))):
        out = tmp_path / name
        result = run_cli("task=benchmark", f"model_dir={model}", f"set={mini_set[0]}", f"images={mini_set[1]}",
                         f"out={out}", "print_config=false", "evaluate=false", *extra,
                         f"hydra.run.dir={tmp_path / 'command'}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((out / "benchmark_settings.json").read_text())["style_reader"] is (name == "own")
        widths[name] = [Image.open(f).width for f in sorted((out / "generated").rglob("*.png"))]
    assert widths["own"] != widths["off"], "the reading of one letter for whole style lines changes the widths"


def test_a_killed_benchmark_goes_on_without_writing_again(tiny_run, mini_set, tmp_path):
    out, log = tmp_path / "bench", tmp_path / "killed.log"
    process = start_cli("task=benchmark", f"model_dir={tiny_run / 'model'}", f"set={mini_set[0]}",
                        f"images={mini_set[1]}", f"out={out}", "batch_size=1", "evaluate=false",
                        f"hydra.run.dir={tmp_path / 'command'}", log=log)
    ledger = out / "generation.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if ledger.is_file() and len(ledger.read_text().splitlines()) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the benchmark ended before it was killed:\n{log.read_text()[-2000:]}"
    before = {json.loads(line)["dst"] for line in ledger.read_text().splitlines()}
    stamps = {dst: (out / "generated" / dst).stat().st_mtime_ns for dst in before}
    orphan = out / "generated" / next(iter(before)).split("/")[0] / "a09-000-99.png"  # saved, never recorded
    orphan.write_bytes((out / "generated" / next(iter(before))).read_bytes())
    with open(ledger, "a") as handle:
        handle.write('{"dst": "cut sh')  # a record cut short by the kill

    result = benchmark(tiny_run, mini_set, out, "batch_size=1", "evaluate=false")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "benchmark.json").read_text())
    assert report["resumed"] == len(before) and report["generated_now"] == 11 - len(before)
    assert report["written"] == 11 and not orphan.exists()
    assert {dst: (out / "generated" / dst).stat().st_mtime_ns for dst in before} == stamps, "written again"
    assert 0 <= report["stop_rate"] <= 1 and report["width_error"] >= 0  # geometry of the resumed lines too
    changed = benchmark(tiny_run, mini_set, out, "num_style_samples=2")
    assert changed.returncode == 2 and "written with other num_style_samples" in changed.stdout + changed.stderr


def test_bad_input_is_one_sentence_and_writes_nothing(tiny_run, mini_set, tmp_path):
    not_a_set = tmp_path / "notes.json.gz"
    not_a_set.write_text("style_ids, gen_id")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "is not a styled-HTG set file": benchmark(tiny_run, (not_a_set, mini_set[1]), tmp_path / "a"),
        "holds no images": benchmark(tiny_run, (mini_set[0], empty), tmp_path / "b"),
        "task=benchmark needs set=": run_cli("task=benchmark", f"model_dir={tiny_run / 'model'}",
                                             f"out={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'command'}"),
        "batch_size must be a whole number": benchmark(tiny_run, mini_set, tmp_path / "d", "batch_size=0"),
    }
    for message, result in cases.items():
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output, output[-2000:]
        assert "Traceback" not in output
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_the_synthetic_test_writers_become_a_set_the_benchmark_scores(tiny_run, tmp_path):
    out = tmp_path / "synthetic"
    result = run_cli("task=synthetic_set", f"run_dir={tiny_run}", f"out={out}", "lines_per_writer=3",
                     f"hydra.run.dir={tmp_path / 'command'}")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = read_set(out / "shtg_synthetic_lines.json.gz")
    datamodule = instantiate(OmegaConf.load(tiny_run / ".hydra" / "config.yaml").data)
    writers = [w.id for w in datamodule.writers("test")]
    assert sorted({s.author for s in samples}) == sorted(writers) and len(samples) <= 3 * len(writers)
    texts = json.loads((out / "images" / "transcriptions.json").read_text())
    for sample in samples:
        assert sample.dst == f"{sample.author}/{sample.gen_id}.png" and texts[sample.dst] == sample.text
        for style in sample.style_ids:  # another line of the same writer, on paper, with another text
            assert style.startswith(sample.author + "_") and style.endswith("_paper")
            assert texts[f"{sample.author}/{style}.png"] != sample.text
    first = datamodule.line(writers[0], 0)  # the test split's own line, pixel for pixel
    assert (out / "images" / writers[0] / f"{writers[0]}_0000.png").read_bytes() == _png(first.clean)
    scored = run_cli("task=benchmark", f"model_dir={tiny_run / 'model'}", f"set={out / 'shtg_synthetic_lines.json.gz'}",
                     f"images={out / 'images'}", f"out={tmp_path / 'bench'}", "limit=3", "evaluate=false",
                     f"hydra.run.dir={tmp_path / 'command2'}")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads((tmp_path / "bench" / "benchmark.json").read_text())["written"] == 3
    again = run_cli("task=synthetic_set", f"run_dir={tiny_run}", f"out={out}", f"hydra.run.dir={tmp_path / 'c3'}")
    assert again.returncode == 2 and "already exists and is not empty" in again.stdout + again.stderr


def _png(tensor) -> bytes:
    import io

    buffer = io.BytesIO()
    tensor_to_image(tensor).save(buffer, format="PNG")
    return buffer.getvalue()
