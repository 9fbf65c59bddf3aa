"""ONNX -> OpenVINO IR (``.xml`` + ``.bin``), FP32 or FP16 weights, the model card in ``rt_info``."""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import quoteattr

from edgeseg.card import CARD_METADATA_KEY

from .onnx import embedded_card
from .quantize import to_openvino_model


def set_openvino_card(model, card: dict):
    """Store the card JSON as the string ``rt_info["edgeseg_card"]`` of an ``openvino.Model``."""
    model.set_rt_info(embedded_card(card), CARD_METADATA_KEY)
    return model


# the card OpenVINO reads back (``model.get_rt_info("edgeseg_card")``): the element right under the IR's top-level
# <rt_info> (two tabs deep as ov.save_model writes it); the one under <framework> is the ONNX file's, kept as it is
_TOP_LEVEL_CARD = re.compile(r"^\t\t<" + CARD_METADATA_KEY + r""" value=(?:"[^"]*"|'[^']*') />$""", re.MULTILINE)


def write_openvino_card(xml_path: str | Path, card: dict) -> Path:
    """Replace the card in an OpenVINO IR's ``rt_info`` in place: only that element of the ``.xml`` changes (the
    graph and the ``.bin`` stay byte for byte; re-saving the model would rewrite the weights). Written to a
    temporary name and renamed."""
    from edgeseg.errors import ModelError
    from edgeseg.fsutil import atomic_write_text

    text = Path(xml_path).read_text(encoding="utf-8")
    found = _TOP_LEVEL_CARD.findall(text)
    if len(found) != 1:
        raise ModelError(f"{Path(xml_path).name} holds {len(found)} top-level model cards, not one",
                         "re-export the model with edgeseg export")
    element = f"\t\t<{CARD_METADATA_KEY} value={quoteattr(embedded_card(card))} />"
    return atomic_write_text(xml_path, _TOP_LEVEL_CARD.sub(lambda _: element, text))


def save_openvino(model, xml_path: str | Path, card: dict, *, fp16_weights: bool) -> Path:
    """Embed ``card`` and save ``model`` as ``xml_path`` + ``.bin`` (callers write into a temporary folder)."""
    import openvino as ov

    set_openvino_card(model, card)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16_weights)
    return Path(xml_path)


def onnx_to_openvino(onnx_path: str | Path, xml_path: str | Path, card: dict, *, precision: str = "fp32") -> Path:
    """Convert an FP32 ONNX file to OpenVINO IR with a static 1 x 3 x H x W input.

    ``precision`` "fp32" keeps FP32 weights; "fp16" stores FP16 weights (half the size; OpenVINO decompresses
    them or runs them in fp16/bf16, whatever the device does: see the card's executed_precision).
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"onnx_to_openvino converts to fp32 or fp16, not {precision}")
    return save_openvino(to_openvino_model(onnx_path), xml_path, card, fp16_weights=precision == "fp16")

