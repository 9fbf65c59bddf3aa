import json

import pytest

from edgeseg.card import CARD_SCHEMA, ModelCard, card_path, read_card, write_card
from edgeseg.errors import ModelError
from edgeseg.zoo import ZOO_DIR


@pytest.mark.parametrize("path", sorted(ZOO_DIR.glob("*.card.json")), ids=lambda p: p.name)
def test_every_shipped_card_reads_into_typed_fields_and_back_unchanged(path):
    data = json.loads(path.read_text())
    card = ModelCard.from_dict(data)
    assert card.to_dict() == data
    assert card.size == data["input_size"][0] and card.threshold == data["threshold"]
    assert card.network == (data.get("source") or {}).get("name", data["name"])
    assert card.test_dice == data["metrics"]["test"]["dice_256"]
    assert card.training_diameter == data["training_scale"]["median_nucleus_diameter_px"]
    assert card.post_config().to_dict() == data["postprocess"]


def test_typed_answers_for_an_int8_export():
    card = read_card(ZOO_DIR / "fast_scnn-int8.onnx")
    assert (card.network, card.precision, card.target, card.executed) == ("fast_scnn", "int8", "x86", "int8")
    assert card.post_config(threshold=0.7).threshold == 0.7 and card.post_config().threshold == card.threshold
    assert card.mean == [0.485, 0.456, 0.406] and card.training_diameters["stained"] > card.training_diameter


@pytest.mark.parametrize("data, message", [
    ([1, 2], "JSON list, not an object"),
    ({"arch": "x", "input_size": [256]}, "malformed input_size"),
    ({"arch": "x", "input_size": "big"}, "malformed input_size"),
    ({"arch": "x", "out_channels": "two"}, "malformed out_channels"),
    ({"arch": "x", "threshold": True}, "malformed threshold"),
    ({"arch": "x", "postprocess": [1]}, "malformed postprocess"),
    ({"arch": "x", "normalisation": {"mean": [0.5]}}, "malformed normalisation"),
    ({"arch": "x", "schema": CARD_SCHEMA + 1}, f"this edgeseg reads schema {CARD_SCHEMA}"),
])
def test_a_malformed_card_is_a_one_line_model_error(data, message):
    with pytest.raises(ModelError, match=message) as info:
        ModelCard.from_dict(data)
    assert "\n" not in str(info.value)


def test_write_card_checks_the_card_and_fills_in_the_sha256(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"weights")
    with pytest.raises(ModelError, match="malformed input_size"):
        write_card(model, {"arch": "x", "input_size": [0, 0]})
    assert not card_path(model).exists()  # nothing written
    write_card(model, ModelCard(name="m", arch="x").replace(threshold=0.4, recipe={"name": "paper"}))
    card = read_card(model)
    assert card.file == "m.onnx" and len(card.sha256) == 64 and card.extra["recipe"] == {"name": "paper"}
    model.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="does not match the sha256"):
        read_card(model)
    assert read_card(model, verify=False).threshold == 0.4


def test_a_card_with_invalid_json_is_a_model_error(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    card_path(model).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(model)


def test_measured_by_names_another_network_and_never_the_cards_own():
    base = {"name": "fast_scnn_he-int8", "arch": "fast_scnn", "source": {"name": "fast_scnn_he"}}
    card = ModelCard.from_dict({**base, "training_scale": {"measured_by": "mobilenetv2_unet"}})
    assert card.measured_by == "mobilenetv2_unet"
    assert ModelCard.from_dict({**base, "training_scale": {"measured_by": "fast_scnn_he"}}).measured_by is None
    assert ModelCard.from_dict(base).measured_by is None
