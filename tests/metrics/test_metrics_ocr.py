"""CER: the bundled OCR reads clean renders, case handling is explicit, other backends fail clearly."""

import importlib.util

import pytest
import torch
from PIL import Image

from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer, normalize
from imuru_pl.metrics.evaluator import get_ocr
from imuru_pl.metrics.ocr import TesseractBackend, TrocrBackend, build_ocr
from imuru_pl.metrics.settings import MetricsSettings


def test_rapidocr_reads_clean_renders_of_legible_fonts(lines):
    backend = get_ocr(MetricsSettings())
    assert "rapidocr" in backend.description
    texts = lines.texts_a + lines.texts_b
    for font in lines.ocr_fonts:
        reads = backend.read([lines.render(t, font) for t in texts])
        assert cer(reads, list(texts)) <= 0.05, (font, reads)


def test_rapidocr_reads_lines_of_any_height(lines):
    """Lines are brought to the OCR height first: a 40 px and a 120 px render read alike."""
    backend = get_ocr(MetricsSettings())
    small, large = (
        lines.render("seven silver spoons", "delius", height=40),
        lines.render("seven silver spoons", "delius", height=120),
    )
    assert backend.read([small, large]) == ["seven silver spoons"] * 2


def test_cer_is_corpus_level_with_optional_case_folding():
    assert cer(["HELLO WORLD"], ["hello world"]) == pytest.approx(10 / 11)
    assert cer(["HELLO WORLD"], ["hello world"], ignore_case=True) == 0.0
    # corpus CER: 1 edit over 3 + 1 edit over 10 reference characters = 2 / 13, not the mean of the rates
    assert cer(["abd", "abcdefghiX"], ["abc", "abcdefghij"]) == pytest.approx(2 / 13)


def test_normalisation_folds_full_width_punctuation_and_spaces():
    assert normalize("  Hello，  world！ ") == "Hello, world!"
    assert cer(["Hello，world"], ["Hello, world"]) == pytest.approx(1 / 12)  # only the missing space counts


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="not one of rapidocr, tesseract, trocr"):
        build_ocr("paddle")


@pytest.mark.skipif(
    importlib.util.find_spec("tesserocr") is not None or importlib.util.find_spec("pytesseract") is not None,
    reason="tesseract bindings are installed here",
)
def test_tesseract_without_bindings_says_what_to_install():
    with pytest.raises(UserError, match="needs tesserocr or pytesseract"):
        TesseractBackend()


@pytest.mark.skipif(
    importlib.util.find_spec("tesserocr") is None and importlib.util.find_spec("pytesseract") is None,
    reason="no tesseract bindings installed",
)
def test_tesseract_reads_a_clean_line(lines):
    try:
        backend = TesseractBackend()
    except UserError as err:
        pytest.skip(str(err))
    assert cer(backend.read([lines.render("seven silver spoons", "delius")]), ["seven silver spoons"]) <= 0.2


def test_trocr_directory_errors_name_the_setting(tmp_path):
    with pytest.raises(UserError, match="metrics.ocr.trocr_dir"):
        TrocrBackend(None)
    with pytest.raises(UserError, match="has no config.json"):
        TrocrBackend(tmp_path)


def test_trocr_directory_loads_offline_and_decodes(tmp_path):
    """A tiny TrOCR whose decoder always emits "h" must read "hhhh" (4 new tokens) from any line."""
    from transformers import (
        ByT5Tokenizer,
        TrOCRConfig,
        TrOCRProcessor,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tok = ByT5Tokenizer()
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=16,
    )
    decoder = TrOCRConfig(
        vocab_size=len(tok),
        d_model=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    model = VisionEncoderDecoderModel(config)
    with torch.no_grad():  # constant decoder state e_0, and only token "h" scores on e_0
        norm = model.decoder.model.decoder.layers[-1].final_layer_norm
        norm.weight.zero_()
        norm.bias.zero_()
        norm.bias[0] = 1.0
        model.decoder.output_projection.weight.zero_()
        model.decoder.output_projection.weight[ord("h") + 3, 0] = 10.0
    model.save_pretrained(tmp_path)
    TrOCRProcessor(
        image_processor=ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(tmp_path)

    backend = TrocrBackend(tmp_path, max_new_tokens=4, batch_size=2)
    assert "Pil" in type(backend.processor.image_processor).__name__  # no torchvision needed
    reads = backend.read(
        [Image.new("RGB", (200, 64), "white"), Image.new("L", (90, 30), 0), Image.new("RGB", (64, 64))]
    )
    assert reads == ["hhhh"] * 3
