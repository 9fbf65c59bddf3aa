"""Bundles: what goes in, and that a damaged or malicious archive is refused without writing outside its folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeseg.card import new_card, write_card
from edgeseg.cli import main
from edgeseg.device.bundle import (
    BundleError,
    check_bundle,
    install_bundle,
    make_bundle,
    open_bundle,
)
from edgeseg.fsutil import sha256_file
from edgeseg.zoo import ZOO_DIR

ZOO_MODELS = ["fast_scnn-fp32", "half_unet-fp32"]  # small zoo files (a .pt is refused: the device has no torch)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "two.tar.gz"
    make_bundle(ZOO_MODELS, out, run={"source": "picam", "threads": 2})
    return out


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (recursive listing), to prove nothing was written."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive, "r:gz") as tf:
        return [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def assert_refused(archive: Path, tmp_path: Path, match: str) -> None:
    """Installing ``archive`` into tmp_path/parent/target fails and leaves the whole tmp_path tree unchanged."""
    parent = tmp_path / "parent"
    parent.mkdir(exist_ok=True)
    (parent / "keep.txt").write_text("the user's file\n")
    before, parent_before = tree(tmp_path), sorted(os.listdir(parent))
    with pytest.raises(BundleError, match=match):
        install_bundle(archive, parent / "target")
    assert sorted(os.listdir(parent)) == parent_before  # the target folder is not even created
    assert tree(tmp_path) == before
    assert (parent / "keep.txt").read_text() == "the user's file\n"


# ------------------------------------------------------------------------------------------------ making


def test_bundle_holds_only_the_manifest_models_and_cards_with_their_sha256(bundle_file):
    names = [m.name for m, _ in members(bundle_file)]
    assert names == [
        "manifest.json",
        "models/fast_scnn-fp32.onnx",
        "models/fast_scnn-fp32.card.json",
        "models/half_unet-fp32.onnx",
        "models/half_unet-fp32.card.json",
    ]
    man = check_bundle(bundle_file)
    from edgeseg import __version__

    assert man["format"] == "edgeseg-bundle" and man["edgeseg_version"] == __version__
    assert [m["name"] for m in man["models"]] == ZOO_MODELS
    for name in ZOO_MODELS:
        for suffix in (".onnx", ".card.json"):
            info = man["files"][f"models/{name}{suffix}"]
            assert info["sha256"] == sha256_file(ZOO_DIR / f"{name}{suffix}")
            assert info["size"] == (ZOO_DIR / f"{name}{suffix}").stat().st_size
        card = json.loads((ZOO_DIR / f"{name}.card.json").read_text())
        entry = next(m for m in man["models"] if m["name"] == name)
        assert entry["input_size"] == card["input_size"] == [256, 256]
        assert entry["threshold"] == card["threshold"]
        assert entry["postprocess"] == card["postprocess"]
    assert man["run"]["model"] == "fast_scnn-fp32" and man["run"]["source"] == "picam" and man["run"]["threads"] == 2
    assert man["target"] == "any"


def test_openvino_model_brings_its_weights_file(tmp_path):
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 3, 8, 8], np.float32, name="image")
    y = ops.sigmoid(ops.multiply(x, ops.constant(np.full((1, 3, 8, 8), 0.5, np.float32))))
    xml = tmp_path / "tiny.xml"
    ov.save_model(ov.Model([y], [x], "tiny"), xml, compress_to_fp16=False)
    write_card(xml, new_card("tiny", name="tiny-fp32", format="openvino", input_size=[8, 8]))
    out = tmp_path / "ov.tar.gz"
    man, _ = make_bundle([str(xml)], out)
    assert sorted(man["files"]) == ["models/tiny.bin", "models/tiny.card.json", "models/tiny.xml"]
    b = install_bundle(out, tmp_path / "inst")
    assert b.model_path == tmp_path / "inst" / "models" / "tiny.xml"
    assert (tmp_path / "inst" / "models" / "tiny.bin").read_bytes() == (tmp_path / "tiny.bin").read_bytes()
    assert b.models[0].format == "openvino" and b.models[0].entry["input_size"] == [8, 8]


def test_bundle_refuses_a_model_whose_file_does_not_match_its_card(tmp_path):
    src = tmp_path / "m.pt"
    shutil.copy(ZOO_DIR / "half_unet-fp32.onnx", src)
    shutil.copy(ZOO_DIR / "half_unet-fp32.card.json", tmp_path / "m.card.json")
    card = json.loads((tmp_path / "m.card.json").read_text())
    card["file"] = "m.pt"
    (tmp_path / "m.card.json").write_text(json.dumps(card))
    data = bytearray(src.read_bytes())
    data[1000] ^= 0xFF
    src.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"):
        make_bundle([str(src)], tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_a_failed_bundle_leaves_no_file_behind(tmp_path):
    out = tmp_path / "out" / "b.tar.gz"
    with pytest.raises(Exception, match="unknown model"):
        make_bundle(["fast_scnn-fp32", "no_such_model"], out)
    assert not out.exists()
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_arm_target_says_when_the_zoo_has_no_arm_variant(tmp_path):
    man, notes = make_bundle(["half_unet-fp32"], tmp_path / "a.tar.gz", target="arm")
    assert man["target"] == "arm" and man["models"][0]["name"] == "half_unet-fp32"
    assert any("no arm-specific variant" in n for n in notes)


def test_arm_target_picks_the_arm_quantised_zoo_variant(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    card = json.loads((ZOO_DIR / "half_unet-fp32.card.json").read_text())
    for name, target in (("half_unet-int8", "x86"), ("half_unet-int8-arm", "arm"), ("half_unet-fp32", None)):
        shutil.copy(ZOO_DIR / "half_unet-fp32.onnx", zoo / f"{name}.onnx")  # (the exporter's naming and card fields)
        precision = name.split("-")[1]
        write_card(zoo / f"{name}.onnx", {**card, "name": name, "precision": precision, "export": {"target": target},
                                        "source": {"name": "half_unet"}})
    monkeypatch.setattr("edgeseg.zoo.ZOO_DIR", zoo)
    man, notes = make_bundle(["half_unet-int8"], tmp_path / "arm.tar.gz", target="arm")
    assert [m["name"] for m in man["models"]] == ["half_unet-int8-arm"]
    assert man["models"][0]["target"] == "arm" and man["run"]["model"] == "half_unet-int8-arm"
    assert "half_unet-int8: using half_unet-int8-arm, quantised for arm" in notes
    man, notes = make_bundle(["half_unet-int8"], tmp_path / "x86.tar.gz", target="x86")
    assert [m["name"] for m in man["models"]] == ["half_unet-int8"]
    assert not any("variant" in n or "quantised for" in n for n in notes)
    man, notes = make_bundle(["half_unet-fp32"], tmp_path / "fp32.tar.gz", target="arm")
    assert [m["name"] for m in man["models"]] == ["half_unet-fp32"]  # an int8-arm file is no fp32 variant
    assert any("no arm-specific variant of this fp32 model" in n for n in notes)


def test_a_model_measured_by_another_brings_it_and_the_installed_bundle_measures_with_it(tmp_path, monkeypatch):
    from edgeseg import Segmenter

    man, notes = make_bundle(["fast_scnn_he-int8"], tmp_path / "he.tar.gz")  # its card: measured by mobilenetv2_unet
    assert [m["name"] for m in man["models"]] == ["fast_scnn_he-int8", "mobilenetv2_unet-int8"]
    assert man["run"]["model"] == "fast_scnn_he-int8"  # the sizer rides along; the default stays the first model
    assert "fast_scnn_he-int8: its nuclei are measured by mobilenetv2_unet: bundling mobilenetv2_unet-int8 too" in notes
    both, _ = make_bundle(["fast_scnn_he-int8", "mobilenetv2_unet-int8"], tmp_path / "both.tar.gz")
    assert [m["name"] for m in both["models"]] == ["fast_scnn_he-int8", "mobilenetv2_unet-int8"]  # not twice
    b = install_bundle(tmp_path / "he.tar.gz", tmp_path / "b")
    empty = tmp_path / "no_zoo"
    empty.mkdir()
    monkeypatch.setattr("edgeseg.zoo.ZOO_DIR", empty)  # a device without the zoo: the bundle is all there is
    with Segmenter.load(b.model_path, threads=1) as seg:
        assert seg.info["scale_measured_by"] == "mobilenetv2_unet-int8"
        assert seg.scale_policy.sizer.name == "mobilenetv2_unet-int8"
        assert Path(seg._sizer.backend_info["path"]).parent == b.dir / "models"


def test_a_model_whose_measuring_network_is_not_in_the_zoo_is_bundled_alone_with_a_note(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    card = json.loads((ZOO_DIR / "half_unet-fp32.card.json").read_text())
    card["training_scale"] = {**card.get("training_scale", {}), "measured_by": "no_such_network"}
    shutil.copy(ZOO_DIR / "half_unet-fp32.onnx", zoo / "half_unet-fp32.onnx")
    write_card(zoo / "half_unet-fp32.onnx", card)
    monkeypatch.setattr("edgeseg.zoo.ZOO_DIR", zoo)
    man, notes = make_bundle(["half_unet-fp32"], tmp_path / "alone.tar.gz")
    assert [m["name"] for m in man["models"]] == ["half_unet-fp32"]
    assert "half_unet-fp32: its nuclei are measured by no_such_network, which is not in the zoo; it will measure " \
           "them itself" in notes


# --------------------------------------------------------------------------------------------- installing


def test_install_then_open_gives_the_default_model_and_run_config(bundle_file, tmp_path):
    b = install_bundle(bundle_file, tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "b")) == ["manifest.json", "models"]
    assert b.dir == (tmp_path / "b").resolve()
    assert b.model_path == b.dir / "models" / "fast_scnn-fp32.onnx"
    assert b.model_path.read_bytes() == (ZOO_DIR / "fast_scnn-fp32.onnx").read_bytes()
    assert [m.name for m in b.models] == ZOO_MODELS
    assert b.model("half_unet-fp32").card.name == "half_unet-fp32"
    cfg = b.run_config
    assert cfg == {
        "model": "fast_scnn-fp32",
        "source": "picam",
        "backend": "auto",
        "threads": 2,
        "threshold": None,
        "tile": "auto",
        "channel": "auto",
        "diameter": None,
    }
    again = open_bundle(tmp_path / "b")
    assert again.manifest == b.manifest
    with pytest.raises(BundleError, match="no model 'nope'"):
        b.model("nope")


def test_reinstall_replaces_the_previous_bundle_completely(bundle_file, tmp_path):
    dest = tmp_path / "b"
    install_bundle(bundle_file, dest)
    one = tmp_path / "one.tar.gz"
    make_bundle(["half_unet-fp32"], one)
    b = install_bundle(one, dest)
    assert sorted(os.listdir(dest)) == ["manifest.json", "models"]
    assert sorted(os.listdir(dest / "models")) == ["half_unet-fp32.card.json", "half_unet-fp32.onnx"]
    assert b.run_config["model"] == "half_unet-fp32"


def test_install_refuses_a_folder_that_holds_other_things(bundle_file, tmp_path):
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not empty"):
        install_bundle(bundle_file, dest)
    assert os.listdir(dest) == ["notes.txt"]


def test_open_bundle_on_an_archive_installs_it_once_into_the_cache(bundle_file, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    b = open_bundle(bundle_file)
    assert b.dir.is_relative_to((tmp_path / "cache").resolve())
    mtime = (b.dir / "manifest.json").stat().st_mtime_ns
    b2 = open_bundle(bundle_file)
    assert b2.dir == b.dir and (b.dir / "manifest.json").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------------------------- damaged archives


def test_one_flipped_byte_in_the_archive_is_refused(bundle_file, tmp_path):
    data = bytearray(bundle_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "flipped.tar.gz"
    bad.write_bytes(bytes(data))
    assert_refused(bad, tmp_path, "truncated or corrupt")


def test_one_flipped_byte_in_a_model_file_is_refused(bundle_file, tmp_path):
    entries = members(bundle_file)
    info, data = entries[1]
    assert info.name == "models/fast_scnn-fp32.onnx"
    flipped = bytearray(data)
    flipped[12345] ^= 0x01
    entries[1] = (info, bytes(flipped))
    bad = write_tar(tmp_path / "tampered.tar.gz", entries)
    assert_refused(bad, tmp_path, r"models/fast_scnn-fp32.onnx does not match its sha256")


def test_a_truncated_archive_is_refused(bundle_file, tmp_path):
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(bundle_file.read_bytes()[: bundle_file.stat().st_size * 2 // 3])
    assert_refused(bad, tmp_path, "truncated or corrupt")


def test_a_missing_file_is_refused(bundle_file, tmp_path):
    entries = [e for e in members(bundle_file) if e[0].name != "models/half_unet-fp32.card.json"]
    bad = write_tar(tmp_path / "missing.tar.gz", entries)
    assert_refused(bad, tmp_path, r"lacks models/half_unet-fp32.card.json")


def test_a_file_not_in_the_manifest_is_refused(bundle_file, tmp_path):
    bad = write_tar(tmp_path / "extra.tar.gz", [*members(bundle_file), reg("models/run.sh", b"#!/bin/sh\n")])
    assert_refused(bad, tmp_path, r"models/run.sh, not listed")


def test_a_dot_dot_entry_is_refused(bundle_file, tmp_path):
    for name in ("../evil.txt", "models/../../evil.txt", "models/../manifest.json"):
        bad = write_tar(tmp_path / "dotdot.tar.gz", [*members(bundle_file), reg(name, b"pwned\n")])
        assert_refused(bad, tmp_path, "leaves its folder")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "parent" / "evil.txt").exists()


def test_an_absolute_path_is_refused(bundle_file, tmp_path):
    target = tmp_path / "abs_evil.txt"
    bad = write_tar(tmp_path / "abs.tar.gz", [*members(bundle_file), reg(str(target), b"pwned\n")])
    assert_refused(bad, tmp_path, "absolute")
    assert not target.exists()


def test_an_outward_symlink_is_refused(bundle_file, tmp_path):
    for linkname in ("../../outside", "/etc/passwd"):
        link = tarfile.TarInfo("models/fast_scnn-fp32.card.json.link")
        link.type, link.linkname = tarfile.SYMTYPE, linkname
        bad = write_tar(tmp_path / "sym.tar.gz", [*members(bundle_file), (link, None)])
        assert_refused(bad, tmp_path, "a link")
    # a symlink replacing a listed model file, pointing outside
    entries = [e for e in members(bundle_file) if e[0].name != "models/fast_scnn-fp32.onnx"]
    link = tarfile.TarInfo("models/fast_scnn-fp32.onnx")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside.onnx")
    bad = write_tar(tmp_path / "sym2.tar.gz", [*entries, (link, None)])
    assert_refused(bad, tmp_path, "a link")
    assert not (tmp_path / "outside.onnx").exists()


def test_hard_links_devices_and_fifos_are_refused(bundle_file, tmp_path):
    specials = []
    hard = tarfile.TarInfo("models/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "manifest.json"
    specials.append((hard, "a link"))
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        dev = tarfile.TarInfo("models/dev")
        dev.type = kind
        specials.append((dev, "a special file"))
    for info, match in specials:
        bad = write_tar(tmp_path / "special.tar.gz", [*members(bundle_file), (info, None)])
        assert_refused(bad, tmp_path, match)


def test_member_count_and_size_limits(bundle_file, tmp_path):
    with pytest.raises(BundleError, match="members"):
        install_bundle(bundle_file, tmp_path / "t", max_members=3)
    with pytest.raises(BundleError, match="MiB"):
        install_bundle(bundle_file, tmp_path / "t", max_bytes=1 << 20)  # the two .onnx files are 1.1 MB
    assert not (tmp_path / "t").exists()


def test_a_gzip_bomb_is_stopped_before_tar_parsing(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb") as g:
        for _ in range(3):
            g.write(b"\0" * (1 << 20))
    with pytest.raises(BundleError, match="unpacks to more than"):
        install_bundle(bomb, tmp_path / "t", max_bytes=1 << 20, max_members=4)
    assert not (tmp_path / "t").exists()


def test_an_archive_without_manifest_is_not_a_bundle(tmp_path):
    bad = write_tar(tmp_path / "plain.tar.gz", [reg("models/a.onnx", b"x")])
    assert_refused(bad, tmp_path, "no manifest.json")


# ------------------------------------------------------------------------------- installed folders


def test_an_installed_bundle_with_a_flipped_byte_is_refused_when_opened(bundle_file, tmp_path):
    b = install_bundle(bundle_file, tmp_path / "b")
    data = bytearray(b.model_path.read_bytes())
    data[-1] ^= 0x01
    b.model_path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fast_scnn-fp32.onnx does not match its sha256"):
        open_bundle(tmp_path / "b")


def test_an_installed_bundle_with_a_missing_or_linked_file_is_refused(bundle_file, tmp_path):
    b = install_bundle(bundle_file, tmp_path / "b")
    card = b.dir / "models" / "half_unet-fp32.card.json"
    card.unlink()
    with pytest.raises(BundleError, match="lacks models/half_unet-fp32.card.json"):
        open_bundle(b.dir)
    outside = tmp_path / "outside.json"
    shutil.copy(ZOO_DIR / "half_unet-fp32.card.json", outside)
    card.symlink_to(outside)
    with pytest.raises(BundleError, match="is a link"):
        open_bundle(b.dir)
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(tmp_path)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_bundle_install_and_refusal(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.tar.gz"
    res = runner.invoke(main, ["bundle", "--models", "half_unet-fp32", "--source", "cam:0", "--out", str(out),
                               "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["sha256"] == sha256_file(out) and info["manifest"]["run"]["source"] == "cam:0"
    res = runner.invoke(main, ["install-bundle", str(out), "--dir", str(tmp_path / "dev"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["models"][0]["name"] == "half_unet-fp32"
    entries = members(out)
    entries[1] = (entries[1][0], entries[1][1][:-1] + bytes([entries[1][1][-1] ^ 1]))
    bad = write_tar(tmp_path / "bad.tar.gz", entries)
    res = runner.invoke(main, ["install-bundle", str(bad), "--dir", str(tmp_path / "dev2")])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: bundle ") and "sha256" in res.stderr and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "dev2").exists()
