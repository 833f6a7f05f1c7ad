"""The artefacts shipped inside the package (imuru_pl/bundled/) load and work with their stored constants, and
task=bundle puts one there with its recipe. These tests fail, not skip, when a bundled artefact is missing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from cli_helpers import compose_cfg, run_cli
from imuru_pl.bundled import RECIPE, bundled_dir, is_bundled, resolve
from imuru_pl.data.image import load_line, tensor_to_image
from imuru_pl.errors import UserError
from imuru_pl.metrics.ocr import RapidOcrBackend
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.writing import write_lines_detailed
from imuru_pl.pipeline import ImuruPipeline
from imuru_pl.tasks import bundle, train

TEXT = "Handwriting is hard to fake"


def _line(render_font: str) -> torch.Tensor:
    import importlib

    from PIL import Image, ImageDraw, ImageFont

    files = sorted((importlib.import_module(f"fontpkg_{render_font}").ROOT / "files").glob("*.ttf"))
    font = ImageFont.truetype(str(([f for f in files if "Regular" in f.name] or files)[0]), 48)
    left, top, right, bottom = font.getbbox(TEXT)
    image = Image.new("L", (right - left + 16, bottom - top + 16), 255)
    ImageDraw.Draw(image).text((8 - left, 8 - top), TEXT, font=font, fill=0)
    line = load_line(image.convert("RGB"), channels=3)
    width = -(-line.shape[-1] // 8) * 8 + 80  # a multiple of 8, then 10 blank columns of paper
    return F.pad(line, (0, width - line.shape[-1]), value=1.0)


def test_the_line_vae_is_bundled_and_loads_by_name():
    assert is_bundled("line_vae"), "imuru_pl/bundled/line_vae is missing: re-create it (docs/vae.md)"
    vae = LineVAE.from_pretrained("line_vae")
    assert vae.padding_latent is not None and vae.stop_threshold is not None
    _recipe_matches_its_files("line_vae")


def test_the_bundled_vae_writes_a_line_back_and_tells_blank_columns_from_ink():
    vae = LineVAE.from_pretrained("line_vae").freeze()
    line = _line("delius")[None]
    with torch.no_grad():
        columns = vae.encode(line, sample=False)
        rebuilt = vae.decode(columns)
        blank = vae.is_blank(columns)[0]
    assert rebuilt.shape == (1, 1, 64, line.shape[-1])
    ink = (line[0].mean(0) < 0).reshape(64, -1, 8).any(dim=(0, 2))  # columns with ink in them
    assert blank[-10:].float().mean() >= 0.9  # the trailing paper stops a line
    assert blank[ink].float().mean() <= 0.1  # written columns do not
    assert F.l1_loss(rebuilt[0], line[0].mean(0, keepdim=True)) < 0.1
    read = RapidOcrBackend().read([tensor_to_image(rebuilt[0])])[0]
    assert read.lower().replace(" ", "")[:10] == TEXT.lower().replace(" ", "")[:10], read


def _recipe_matches_its_files(name: str) -> dict:
    return _recipe_matches_its_files_in(bundled_dir(name))


def _recipe_matches_its_files_in(directory: Path) -> dict:
    recipe = json.loads((directory / RECIPE).read_text("utf-8"))
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != RECIPE}
    assert set(recipe["files"]) == on_disk  # nothing shipped that the recipe does not describe
    for file, entry in recipe["files"].items():  # the weights are the ones the recipe describes
        data = (directory / file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], file
    assert recipe["command"].startswith("python run.py") and recipe["evaluation"]
    for config in directory.rglob("config.json"):  # no path of the machine it was made on
        assert "_name_or_path" not in json.loads(config.read_text("utf-8")), config
    return recipe


def test_the_starter_is_bundled_and_loads_by_name():
    assert is_bundled("starter"), "imuru_pl/bundled/starter is missing: re-create it (docs/legibility.md)"
    recipe = _recipe_matches_its_files("starter")
    assert recipe["config"]["vae"]["pretrained"] == "line_vae"  # trained over the bundled VAE (its first stage)
    pipeline = ImuruPipeline.from_pretrained("starter")
    assert pipeline.model.letters is not None and pipeline.vae.stop_threshold is not None  # its own copy of the VAE
    shipped = json.loads((bundled_dir("line_vae") / RECIPE).read_text("utf-8"))["files"]
    assert {f"vae/{name}": entry for name, entry in shipped.items()} == {  # the VAE the package ships
        name: entry for name, entry in recipe["files"].items() if name.startswith("vae/")}


def test_the_starter_reads_a_style_line_for_its_width():
    from imuru_pl.metrics.cer import cer

    pipeline = ImuruPipeline.from_pretrained("starter")
    assert pipeline.reader is not None, "the starter carries its line reader in reader/"
    read = pipeline.read_style(_line("delius"))
    assert read is not None and cer([read], [TEXT]) < 0.25, read  # a font family the reader trained on


def test_the_starter_writes_a_line_in_a_hand_it_never_saw():
    pipeline = ImuruPipeline.from_pretrained("starter")
    style = _line("delius")[None]
    texts = ["a line never seen", "and a longer line of words"]
    with torch.no_grad():
        written = write_lines_detailed(pipeline.model, pipeline.vae, style.expand(2, -1, -1, -1),
                                       torch.tensor([style.shape[-1]] * 2), texts)
    assert written.stopped.all(), "each line ends by itself"
    short, long = (image.shape[-1] for image in written.images)
    assert 8 * len(texts[0]) <= short < long <= 40 * len(texts[1])  # longer text, wider line, letter-sized
    for image in written.images:
        assert (image < 0).float().mean() > 0.01, "ink on the paper"


def test_generate_uses_the_starter_when_no_model_is_named(tmp_path: Path):
    style = tmp_path / "style.png"
    tensor_to_image(_line("delius")).save(style)
    result = run_cli("task=generate", f"style={style}", "text=hello there", f"out={tmp_path / 'hello.png'}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(tmp_path / "hello.png") as image:
        assert image.height == 64 and image.width >= 64


def test_the_demo_writes_the_starters_lines_beside_its_own(tmp_path: Path):
    from imuru_pl.tasks.heldout import model_pipeline

    cfg = compose_cfg(["experiment=demo"], tmp_path)
    assert cfg.heldout.compare_with == "starter"
    assert model_pipeline(cfg.heldout.compare_with).model.letters is not None
    assert compose_cfg(["experiment=legible_fonts"], tmp_path).heldout.compare_with is None  # it makes the starter


@pytest.mark.parametrize("experiment", ["demo", "legible", "legible_fonts"])
def test_the_cpu_recipes_start_from_the_bundled_vae(experiment: str, tmp_path: Path):
    from imuru_pl.tasks.train_vae import ensure_vae

    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    assert cfg.vae.pretrained == "line_vae"
    assert LineVAE.from_pretrained(ensure_vae(cfg, tmp_path)).stop_threshold is not None
    assert not (tmp_path / "vae").exists()  # nothing trained


def test_bundle_puts_an_artefact_in_place_with_its_recipe(tmp_path: Path):
    report = tmp_path / "vae_cer.json"
    report.write_text(json.dumps({"delta_cer": 0.01}))
    cfg = compose_cfg(["task=bundle", "name=line_vae", f"source={bundled_dir('line_vae')}", f"into={tmp_path}",
                       f"evaluation=[{report}]"], tmp_path / "run")
    bundle.run(cfg)
    recipe = json.loads((tmp_path / "line_vae" / RECIPE).read_text("utf-8"))
    assert recipe["evaluation"] == {f"{tmp_path.name}/vae_cer.json": {"delta_cer": 0.01}}
    assert set(recipe["files"]) >= {"config.json", "diffusion_pytorch_model.safetensors", "line_vae.json"}
    LineVAE.from_pretrained(tmp_path / "line_vae")
    assert not list(tmp_path.glob(".line_vae.*"))  # no staging folder left

    before = sorted(p.name for p in (tmp_path / "line_vae").iterdir())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    cfg.source = str(broken)
    with pytest.raises(UserError):
        bundle.run(cfg)
    assert sorted(p.name for p in (tmp_path / "line_vae").iterdir()) == before


def test_a_stage_trained_on_from_a_recipe_keeps_the_stages_before_it(tmp_path: Path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / RECIPE).write_text(json.dumps({"stages": [{"command": "python run.py first", "commit": "abc",
                                                           "run_dir": "lf10k"}]}))
    run = tmp_path / "lf20k"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"vae:\n  init_from: {earlier}\n")
    (run / ".hydra" / "overrides.yaml").write_text(f"- task=train_vae\n- vae.init_from={earlier}\n")
    cfg = compose_cfg(["task=bundle", "name=line_vae", f"source={bundled_dir('line_vae')}", f"into={tmp_path}",
                       f"run_dir={run}"], tmp_path / "run")
    bundle.run(cfg)
    recipe = json.loads((tmp_path / "line_vae" / RECIPE).read_text("utf-8"))
    assert [s["command"] for s in recipe["stages"]] == [
        "python run.py first", f"python run.py task=train_vae vae.init_from={earlier}"]
    assert recipe["command"] == recipe["stages"][-1]["command"] and recipe["config"]["vae"]["init_from"]


def test_a_model_trained_on_from_the_starter_keeps_the_starters_stages(tmp_path: Path):
    run = tmp_path / "starter_cont"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("init_from: starter\nvae:\n  pretrained: line_vae\n")
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=legible_fonts\n- init_from=starter\n")
    cfg = compose_cfg(["task=bundle", "name=starter", f"source={bundled_dir('starter')}", f"into={tmp_path}",
                       f"run_dir={run}"], tmp_path / "run")
    assert train.init_dir(OmegaConf.create({"init_from": "starter"})) == bundled_dir("starter")
    earlier = json.loads((bundled_dir("starter") / RECIPE).read_text("utf-8"))["stages"]
    bundle.run(cfg)
    recipe = json.loads((tmp_path / "starter" / RECIPE).read_text("utf-8"))
    assert recipe["stages"][:-1] == earlier and len(earlier) >= 1
    assert recipe["stages"][-1]["command"] == "python run.py experiment=legible_fonts init_from=starter"


def test_a_reader_is_added_to_the_bundled_starter_with_its_recipe_kept(tmp_path: Path):
    from imuru_pl.models.reader import LineReader

    reader = LineReader(channels=[8, 16, 16, 16], hidden=32).save_pretrained(tmp_path / "lf" / "vae_reader")
    (reader / "metrics.json").write_text(json.dumps({"cer_val_clean": 0.5}))
    cfg = compose_cfg(["task=bundle", "name=starter", f"style_reader={reader}", f"into={tmp_path}"], tmp_path / "run")
    bundle.run(cfg)
    kept = json.loads((bundled_dir("starter") / RECIPE).read_text("utf-8"))
    recipe = _recipe_matches_its_files_in(tmp_path / "starter")
    assert recipe["stages"] == kept["stages"] and recipe["evaluation"] == kept["evaluation"]
    assert recipe["reader"]["source"] == "lf/vae_reader" and recipe["reader"]["metrics"] == {"cer_val_clean": 0.5}
    assert "reader/model.safetensors" in recipe["files"] and "reader/metrics.json" not in recipe["files"]
    assert ImuruPipeline.from_pretrained(tmp_path / "starter").reader.hidden == 32
    cfg = compose_cfg(["task=bundle", "name=line_vae", f"style_reader={reader}", f"into={tmp_path}"], tmp_path / "run")
    with pytest.raises(UserError, match="style_reader= goes with name=starter"):
        bundle.run(cfg)
    assert not (tmp_path / "line_vae").exists()


def test_a_later_vae_stage_goes_under_the_bundled_starter_and_the_model_keeps_its_constants(tmp_path: Path):
    later = LineVAE.from_pretrained("line_vae")
    later.stop_threshold = 0.5  # told apart from the starter's own copy by its constants
    later.save_pretrained(tmp_path / "lf" / "vae")
    cfg = compose_cfg(["task=bundle", "name=starter", f"line_vae={tmp_path / 'lf' / 'vae'}", f"into={tmp_path}"],
                      tmp_path / "run")
    bundle.run(cfg)
    kept = json.loads((bundled_dir("starter") / RECIPE).read_text("utf-8"))
    recipe = _recipe_matches_its_files_in(tmp_path / "starter")
    assert recipe["stages"] == kept["stages"] and recipe["evaluation"] == kept["evaluation"]
    assert recipe["vae"]["source"] == "lf/vae" and "stages" not in recipe["vae"]  # a run directory has no recipe
    assert recipe["files"]["model.safetensors"] == kept["files"]["model.safetensors"]
    before, after = ImuruPipeline.from_pretrained("starter"), ImuruPipeline.from_pretrained(tmp_path / "starter")
    assert after.vae.stop_threshold == 0.5 and after.model.stop_threshold == before.model.stop_threshold
    assert torch.equal(after.model.latent_std, before.model.latent_std)
    assert torch.equal(after.model.padding_latent, before.model.padding_latent)
    cfg = compose_cfg(["task=bundle", "name=line_vae", "line_vae=line_vae", f"into={tmp_path}"], tmp_path / "run")
    with pytest.raises(UserError, match="line_vae= goes with name=starter"):
        bundle.run(cfg)
    assert not (tmp_path / "line_vae").exists()


def test_a_missing_bundled_name_is_one_sentence(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("imuru_pl.bundled.ROOT", tmp_path)
    with pytest.raises(UserError, match="not part of this install"):
        resolve("starter")
    assert resolve("some/dir") == Path("some/dir")
