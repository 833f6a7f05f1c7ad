"""The HWD backbone: torchvision-named VGG16 weights load from .pth or .safetensors and are used."""

import pytest
import torch
from safetensors.torch import save_file

from imuru_pl.errors import UserError
from imuru_pl.metrics.hwd import hwd
from imuru_pl.metrics.vgg import VGG16Features, load_backbone


def torchvision_style_state(seed: int) -> dict[str, torch.Tensor]:
    """What torchvision's vgg16(num_classes=10400).state_dict() holds: features.* plus a classifier."""
    model = VGG16Features()
    model.reset_parameters(seed)
    state = dict(model.state_dict())
    state["classifier.6.weight"] = torch.zeros(10400, 8)  # ignored by the loader
    return state


@pytest.fixture(scope="module")
def small_sets(lines):
    writers = ("delius", "great_vibes")
    return lines.items(("good morning",), writers), lines.items(lines.texts_b[:1], writers)


def test_loaded_weights_are_used_and_give_repeatable_hwd(tmp_path, small_sets):
    state = torchvision_style_state(seed=7)
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = load_backbone(tmp_path / "vgg16.pth")
    assert torch.equal(loaded.model.features[28].weight, state["features.28.weight"])
    assert "vgg16.pth" in loaded.description and "random" not in loaded.description

    fake, real = small_sets
    from_file = hwd(loaded.model, fake, real)[0]
    again = hwd(load_backbone(tmp_path / "vgg16.pth").model, fake, real)[0]
    default = hwd(load_backbone(None).model, fake, real)[0]
    assert from_file == again
    assert from_file != pytest.approx(default, rel=1e-3)


def test_safetensors_and_wrapped_checkpoints_load(tmp_path):
    state = {k: v for k, v in torchvision_style_state(seed=3).items() if k.startswith("features.")}
    save_file(state, str(tmp_path / "vgg16.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    for name in ("vgg16.safetensors", "ckpt.pt"):
        model = load_backbone(tmp_path / name).model
        assert torch.equal(model.features[0].weight, state["features.0.weight"])


def test_random_default_is_fixed_by_its_seed():
    a, b, c = (load_backbone(None, seed).model for seed in (0, 0, 1))
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert "relative only" in load_backbone(None).description


def test_unusable_backbone_files_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_backbone(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_backbone(tmp_path / "junk.pth")
    state = torchvision_style_state(seed=0)
    del state["features.28.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="no features.28.bias"):
        load_backbone(tmp_path / "partial.pth")
    state = torchvision_style_state(seed=0)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, tmp_path / "gray.pth")
    with pytest.raises(UserError, match="features.0.weight of shape"):
        load_backbone(tmp_path / "gray.pth")
