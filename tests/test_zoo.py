import json
import shutil

import pytest

from edgeseg.card import write_card
from edgeseg.errors import ModelError
from edgeseg.zoo import ZOO_DIR, Zoo, resolve_model, variant_name


def test_variant_names_are_made_in_one_place():
    assert variant_name("fast_scnn", "onnx", "int8") == "fast_scnn-int8"
    assert variant_name("fast_scnn", "onnx", "int8", "arm") == "fast_scnn-int8-arm"
    assert variant_name("half_unet", "openvino", "int8", "x86-no-vnni") == "half_unet-int8-x86-no-vnni-ov"
    assert variant_name("half_unet", "openvino", "fp32", "arm") == "half_unet-fp32-ov"  # float files name no target


def test_variants_of_a_shipped_network_by_precision_and_format():
    zoo = Zoo()
    assert {"fast_scnn", "half_unet", "mobilenetv2_unet"} <= set(zoo.networks())
    int8 = [r.name for r in zoo.variants("half_unet", precision="int8")]
    # ONNX first (this x86 CPU's file first, the ARM one after it), then the OpenVINO IR
    assert int8[0] == "half_unet-int8" and int8[-1] == "half_unet-int8-ov"
    assert int8.index("half_unet-int8-arm") == len(int8) - 2
    assert [r.name for r in zoo.variants("half_unet", precision="int8", formats=("openvino",))] == ["half_unet-int8-ov"]
    assert all(r.format != "torch" for r in zoo.variants("half_unet"))
    assert zoo.checkpoint("half_unet").name == "half_unet"


@pytest.fixture
def flavoured_zoo(tmp_path):
    """A zoo with one network quantised for three CPUs (files are copies; the cards say what they are)."""
    card = json.loads((ZOO_DIR / "fast_scnn-int8.card.json").read_text())
    for name, target in (("fast_scnn-int8", "x86"), ("fast_scnn-int8-arm", "arm"),
                         ("fast_scnn-int8-x86-no-vnni", "x86-no-vnni")):
        shutil.copy(ZOO_DIR / "fast_scnn-int8.onnx", tmp_path / f"{name}.onnx")
        write_card(tmp_path / f"{name}.onnx", {**card, "name": name, "export": {**card["export"], "target": target}})
    return Zoo(tmp_path)


def test_variants_put_the_files_for_the_asked_cpu_first(flavoured_zoo):
    x86 = [r.name for r in flavoured_zoo.variants("fast_scnn", precision="int8", target="x86")]
    assert x86 == ["fast_scnn-int8", "fast_scnn-int8-x86-no-vnni", "fast_scnn-int8-arm"]
    arm = [r.name for r in flavoured_zoo.variants("fast_scnn", precision="int8", target="arm")]
    assert arm[0] == "fast_scnn-int8-arm"


def test_variants_put_the_no_vnni_flavour_first_for_an_avx2_cpu(flavoured_zoo):
    avx2 = [r.name for r in flavoured_zoo.variants("fast_scnn", precision="int8", target="x86-no-vnni")]
    assert avx2 == ["fast_scnn-int8-x86-no-vnni", "fast_scnn-int8", "fast_scnn-int8-arm"]


def test_the_zoo_ships_guarded_int8_files_for_avx2_cpus_without_vnni():
    zoo = Zoo()
    for net in ("fast_scnn", "fast_scnn_he"):
        ref = zoo.get(f"{net}-int8-x86-no-vnni")
        assert ref is not None and ref.network == net and ref.card.target == "x86-no-vnni"
        assert ref.card.extra["quantization"]["reduce_range"] is True  # 7-bit weights: no u8 x s8 saturation
        guard = ref.card.extra["guard"]
        assert guard["drop"] <= guard["max_drop"] and ref.card.test_dice is not None
        assert zoo.fp32_twin(ref).name == f"{net}-fp32"


def test_for_target_swaps_in_the_file_made_for_that_cpu(flavoured_zoo):
    x86 = flavoured_zoo.get("fast_scnn-int8")
    assert flavoured_zoo.for_target(x86, "arm").name == "fast_scnn-int8-arm"
    assert flavoured_zoo.for_target(x86, "x86") is x86


def test_a_zoo_name_wins_over_a_same_named_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast_scnn-int8").mkdir()  # e.g. left behind by --out fast_scnn-int8
    ref = resolve_model("fast_scnn-int8")
    assert ref.path == (ZOO_DIR / "fast_scnn-int8.onnx").resolve() and ref.format == "onnx"
    with pytest.raises(ModelError, match="run folder .* has no best.pt"):
        resolve_model(str(tmp_path / "fast_scnn-int8"))
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        resolve_model("nope")


def test_the_default_run_model_is_shipped_in_every_int8_flavour_with_weights_free_of_monuseg():
    from edgeseg.zoo import DEFAULT_RUN_MODEL

    zoo = Zoo()
    ref = zoo.get(DEFAULT_RUN_MODEL)
    assert ref is not None and ref.format == "onnx" and ref.precision == "int8"
    names = {r.name for r in zoo.variants(ref.network, precision="int8")}
    assert {f"{ref.network}-int8", f"{ref.network}-int8-arm", f"{ref.network}-int8-x86-no-vnni"} <= names
    card = ref.card.to_dict()
    roots = [card["data"]["spec"], *(src["root"] for src in card["data"]["sources"])]
    assert not [r for r in roots if "monuseg" in r.lower()], roots  # MoNuSeg is CC BY-NC-SA: not in the default
    assert "NC" not in card["licence"], card["licence"]
    assert card["outputs"] == ["foreground", "boundary"]  # it separates touching nuclei with the seeded watershed


def test_every_shipped_file_carries_the_card_beside_it():
    """A file copied alone (no side card) is run with its embedded card: it must say what the side card says
    (the post-processing is re-tuned after export; tune_postprocess --write puts it back inside)."""
    from edgeseg.backends import read_embedded_card

    files = sorted(p for p in ZOO_DIR.iterdir() if p.suffix in (".onnx", ".xml"))
    assert len(files) >= 10
    for path in files:
        side = json.loads(path.with_name(path.stem + ".card.json").read_text())
        inside = read_embedded_card(path)
        assert inside == {k: v for k, v in side.items() if k not in ("file", "sha256")}, path.name
