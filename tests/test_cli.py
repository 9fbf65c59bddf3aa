import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from edgeseg.cli import main


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, sample_dir_module):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = _run("train", "fast_scnn", "--data", sample_dir_module, "--epochs", "1", "--batch-size", "4", "--threads", "2",
             "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def sample_dir_module():
    from conftest import SAMPLE

    return SAMPLE


def test_models_json_lists_the_three_networks_with_their_parameter_counts():
    r = _run("models", "--json")
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.output) if row["kind"] == "architecture"}
    assert abs(rows["half_unet"]["params"] / 0.118e6 - 1) <= 0.10
    assert abs(rows["mobilenetv2_unet"]["params"] / 6.629e6 - 1) <= 0.01
    assert abs(rows["fast_scnn"]["params"] / 0.154e6 - 1) <= 0.10
    assert all(row["gflops"] > 0 for row in rows.values())


def test_models_table_keeps_a_gap_after_the_longest_file_name():
    r = _run("models")
    assert r.exit_code == 0
    lines = [line for line in r.output.splitlines() if "-int8-x86-no-vnni" in line]
    assert lines
    for line in lines:
        name, rest = line.split(" ", 1)
        assert name.endswith("-x86-no-vnni") and rest.startswith(" ") and rest.split()[0] == "zoo", line


def test_eval_json_has_the_contract_fields(trained_run, sample_dir_module):
    r = _run("eval", trained_run, "--data", sample_dir_module, "--split", "all", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"dice", "iou", "map", "f1_50", "count_mae", "n_images", "dice_256", "per_type"} <= set(out)
    assert out["n_images"] == 8 and 0.0 <= out["dice"] <= 1.0
    assert set(out["per_type"]) == {"fluorescence", "stained"}
    assert {"map", "f1_50", "count_mae", "count_bias"} == set(out["cc"])  # plain connected components, for comparison
    assert 0 <= out["n_tiled"] <= 2  # only the 360x360 and 520x696 frames are large enough to be tiled
    assert out["scale_measured_by"] == "itself"


def test_eval_says_which_network_measured_the_nuclei(sample_dir_module):
    out = json.loads(_run("eval", "fast_scnn_he-int8", "--data", sample_dir_module, "--split", "all", "--json").output)
    assert out["scale_measured_by"] == "mobilenetv2_unet-int8" and out["n_images"] == 8  # its card's measured_by
    text = _run("eval", "fast_scnn_he-int8", "--data", sample_dir_module, "--split", "all").output
    assert "nuclei measured for the scale by mobilenetv2_unet-int8" in text


def test_eval_of_a_paired_folder_defaults_to_all_images(trained_run, tmp_path):
    from conftest import write_disc_pair

    for i in range(3):
        write_disc_pair(tmp_path, f"img{i}")
    out = json.loads(_run("eval", trained_run, "--data", tmp_path, "--json").output)
    assert out["split"] == "all" and out["n_images"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "no_such_model", "--data", "."], "unknown model 'no_such_model'"),
        (["train", "resnet9000", "--data", "."], "unknown model 'resnet9000'"),
        (["train", "fast_scnn", "--data", "/no/such/folder"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


def test_encoder_weights_with_wrong_keys_is_a_one_line_error(tmp_path, sample_dir_module):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    r = subprocess.run([sys.executable, "-m", "edgeseg.cli", "train", "mobilenetv2_unet", "--data",
                        str(sample_dir_module), "--encoder-weights", str(bad), "--epochs", "1", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "bad.pth" in r.stderr and "Traceback" not in r.stderr
