"""Odd inputs and malformed models, as a new user meets them (issue 19, items 4-9): every case ends in one line, the
documented exit code, no traceback, and nothing half-written on disk.

Huge frames are refused from their header before anything is allocated (the files here only claim their size: a
decoder would fail on them, a header check does not); compressed and truncated TIFFs, image folders with bad
files, single images; model files that load but cannot run, or whose output or card is not what the card says;
bundles with bad settings or files the device cannot run. Runs go through the real command line (click's runner,
or a subprocess where a native library could print its own lines)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import write_threshold_onnx
from fault_inputs import failing_onnx, half_output_onnx, png_claiming, random_frames, truncate

from edgeseg.cli import main
from edgeseg.device.bundle import install_bundle, make_bundle
from edgeseg.device.codecs import h264_available, video_fourcc
from edgeseg.device.sources import FrameTooLarge, image_size, open_source

N_PAGES = 48


# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_threshold_onnx(tmp_path_factory.mktemp("model") / "bright.onnx")


def run_cli(*args: str):
    """``edgeseg ARGS`` in this process: (exit code, stdout, stderr)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def run_subprocess(*args: str, cwd: Path | None = None):
    """``edgeseg ARGS`` in a new process, so that what native libraries print lands in its stderr too."""
    code = "import sys; from edgeseg.cli import main; main(sys.argv[1:])"
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                       cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def one_error_line(stderr: str, *needles: str) -> str:
    """stderr is exactly one ``error: ...`` line holding every needle, and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_args(model: Path, source, out: Path, *extra: str) -> list:
    return ["run", "--model", model, "--source", source, "--no-display", "--no-record", "--out", out, *extra]


def log_lines(out: Path) -> list[dict]:
    """Every line of the run's log, each a complete JSON object."""
    return [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]


def no_hidden_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*")]


# ------------------------------------------------------------------------------------------------ huge frames


def test_a_20000_pixel_square_image_is_refused_from_its_header(model, tmp_path):
    big = png_claiming(tmp_path / "big.png", 20000, 20000)
    code, _, err = run_cli(*run_args(model, big, tmp_path / "out"))
    assert code == 2
    one_error_line(err, "20000x20000", "--max-pixels 25000000", "GB of memory")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_20000_pixel_square_tiff_is_refused_from_its_header(model, tmp_path):
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, shape=(20000, 20000), dtype=np.uint8)  # a sparse file: the data is never written
    with pytest.raises(FrameTooLarge, match="20000x20000"):
        open_source(big)
    code, _, err = run_cli(*run_args(model, big, tmp_path / "out"))
    assert code == 2 and "20000x20000" in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_a_huge_synthetic_source_is_refused_before_its_frames_are_made(model, tmp_path):
    code, _, err = run_cli(*run_args(model, "synthetic:30000x30000", tmp_path / "out"))
    assert code == 2
    one_error_line(err, "30000x30000", "900.0 MP")
    assert not (tmp_path / "out").exists()


def test_a_picamera_stream_above_max_pixels_is_refused_before_the_camera_opens():
    """picam@WxH names its main stream's size: checked against --max-pixels before picamera2 is even imported."""
    with pytest.raises(FrameTooLarge, match="8000x6000"):
        open_source("picam@8000x6000", max_pixels=25_000_000)


def test_max_pixels_applies_to_videos_and_can_be_raised_or_turned_off(model, tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(3):
        writer.write(np.full((48, 64, 3), 60 * k, np.uint8))
    writer.release()
    code, _, err = run_cli(*run_args(model, clip, tmp_path / "small", "--max-pixels", "1000"))
    assert code == 2 and "64x48" in one_error_line(err, "--max-pixels 1000")
    code, _, _ = run_cli(*run_args(model, clip, tmp_path / "off", "--max-pixels", "0"))
    assert code == 0 and log_lines(tmp_path / "off")[-1]["frames"] == 3
    code, _, err = run_cli(*run_args(model, clip, tmp_path / "neg", "--max-pixels", "-1"))
    assert code == 2 and "--max-pixels -1" in one_error_line(err)


def test_a_folder_skips_a_huge_image_and_says_why(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        cv2.imwrite(str(folder / f"a{k}.png"), random_frames(1, 64)[0])
    png_claiming(folder / "b_big.png", 20000, 20000)
    code, _, err = run_cli(*run_args(model, folder, tmp_path / "out"))
    assert code == 0
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        ln for ln in err.splitlines() if ln.startswith("warning: skipped b_big.png: ") and "20000x20000" in ln]
    assert len(err.strip().splitlines()) == 1
    log = log_lines(tmp_path / "out")
    assert log[-1]["type"] == "summary" and log[-1]["frames"] == 2
    assert any(rec.get("event") == "unreadable_image" for rec in log)


def test_image_size_reads_png_jpeg_bmp_and_tiff_headers(tmp_path):
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".tif"):
        cv2.imwrite(str(tmp_path / f"i{ext}"), img)
        assert image_size(tmp_path / f"i{ext}") == (53, 37), ext


# ------------------------------------------------------------------------------------------------------ TIFF


@pytest.mark.parametrize("compression", ["lzw", "deflate", "zstd"])
def test_compressed_tiff_stacks_are_read_whole(model, tmp_path, compression):
    stack = tmp_path / f"{compression}.tif"
    tifffile.imwrite(stack, random_frames(6), compression=compression)
    code, _, err = run_cli(*run_args(model, stack, tmp_path / "out"))
    assert code == 0, err
    summary = log_lines(tmp_path / "out")[-1]
    assert summary["frames"] == 6 and summary["stopped"] == "end"


def test_a_compressed_tiff_without_imagecodecs_is_a_missing_dependency_not_a_broken_file(model, tmp_path,
                                                                                           monkeypatch):
    """A broken install without imagecodecs: tifffile cannot decode an LZW page. That is exit 3 (a missing
    dependency, with the pip line), for the run and for reading the image, not exit 4 (a source that failed)."""
    from edgeseg.data import read_image
    from edgeseg.errors import MissingDependency

    stack = tmp_path / "lzw.tif"
    tifffile.imwrite(stack, random_frames(3), compression="lzw", photometric="minisblack")

    def no_codec(*args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_codec)
    monkeypatch.setattr(tifffile, "imread", no_codec)
    code, _, err = run_cli(*run_args(model, stack, tmp_path / "out"))
    assert code == 3
    one_error_line(err, "lzw.tif is compressed and reading it needs imagecodecs", "pip install imagecodecs")
    with pytest.raises(MissingDependency, match="needs imagecodecs"):
        read_image(stack)


def test_a_truncated_tiff_exits_4_after_the_pages_it_could_read(model, tmp_path):
    stack = tmp_path / "cut.tif"
    tifffile.imwrite(stack, random_frames(N_PAGES), compression="lzw")  # tifffile's own metadata says 48 pages
    truncate(stack, 1 / 3)
    code, out, err = run_cli(*run_args(model, stack, tmp_path / "out"))
    assert code == 4
    line = one_error_line(err, "cut.tif stopped after", f"of {N_PAGES} pages (truncated or corrupt)")
    read = int(line.split("stopped after ")[1].split()[0])
    assert 0 < read < N_PAGES
    log = log_lines(tmp_path / "out")  # every line complete, the summary last
    assert log[-1]["type"] == "summary" and log[-1]["stopped"] == "source_failed" and log[-1]["frames"] == read
    assert "stopped after" in log[-1]["error"]
    assert "FPS end to end" in out
    assert no_hidden_files(tmp_path / "out")


def test_a_truncated_imagej_stack_keeps_the_planes_before_the_cut(model, tmp_path):
    """ImageJ/Fiji write the first page's header, the planes back to back, then the other headers at the end: a cut
    copy has lost every header but one, and still holds the planes before the cut."""
    stack = tmp_path / "fiji.tif"
    data = random_frames(N_PAGES)
    tifffile.imwrite(stack, data[:, None], imagej=True)
    with tifffile.TiffFile(stack) as tif:
        offset = tif.pages[0].dataoffsets[0]
    truncate(stack, 0.5)
    kept = (stack.stat().st_size - offset) // data[0].nbytes  # whole planes left
    assert 0 < kept < N_PAGES
    code, _, err = run_cli(*run_args(model, stack, tmp_path / "out"))
    assert code == 4
    one_error_line(err, f"stopped after {kept} of {N_PAGES} pages")
    assert log_lines(tmp_path / "out")[-1]["frames"] == kept
    with open_source(stack) as src:  # the planes read are the planes written
        got = [src.read().image for _ in range(kept)]
    assert all(np.array_equal(g, d) for g, d in zip(got, data[:kept], strict=True))


def test_a_truncated_tiff_without_metadata_stops_where_its_page_chain_breaks(model, tmp_path):
    stack = tmp_path / "plain.tif"
    tifffile.imwrite(stack, random_frames(N_PAGES), compression="lzw", metadata=None)
    truncate(stack, 1 / 3)
    code, _, err = run_cli(*run_args(model, stack, tmp_path / "out"))
    assert code == 4
    one_error_line(err, "plain.tif stopped after", "pages (truncated or corrupt)")


def test_a_folder_prints_each_file_it_skips_and_why(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"f{k}.png"), random_frames(1, 64)[0])
    (folder / "f1_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "f2_empty.tif").write_bytes(b"")
    code, _, err = run_cli(*run_args(model, folder, tmp_path / "out"))
    assert code == 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith("warning: skipped f1_broken.png: ")
    assert lines[1].startswith("warning: skipped f2_empty.tif: ")
    assert log_lines(tmp_path / "out")[-1]["frames"] == 3


def test_a_single_image_is_a_one_frame_source(model, tmp_path):
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), random_frames(1, 80)[0])
    code, _, err = run_cli(*run_args(model, image, tmp_path / "out"))
    assert code == 0, err
    summary = log_lines(tmp_path / "out")[-1]
    assert summary["frames"] == 1 and summary["stopped"] == "end"


def test_a_single_image_that_cannot_be_read_is_exit_2(model, tmp_path):
    image = tmp_path / "broken.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 cut here")
    code, _, err = run_cli(*run_args(model, image, tmp_path / "out"))
    assert code == 2 and "broken.jpg" in one_error_line(err)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- malformed models


def test_an_output_size_that_differs_from_the_card_is_one_line(tmp_path):
    half = half_output_onnx(tmp_path / "half.onnx")
    code, _, err = run_cli(*run_args(half, "synthetic:64x64:2", tmp_path / "out"))
    assert code == 2
    one_error_line(err, "half gives output [1, 1, 128, 128] but its card says [1, 1, 256, 256]")
    assert not (tmp_path / "out").exists()


def test_a_card_that_is_a_json_list_is_one_line(model, tmp_path):
    copy = tmp_path / "m.onnx"
    shutil.copy(model, copy)
    (tmp_path / "m.card.json").write_text("[1, 2, 3]")
    code, _, err = run_cli(*run_args(copy, "synthetic:64x64:2", tmp_path / "out"))
    assert code == 2 and "is a JSON list, not an object" in one_error_line(err)


def test_a_corrupt_xml_without_a_card_is_one_line_and_nothing_else(tmp_path):
    (tmp_path / "model.xml").write_text("corrupt\n")
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    code, out, err = run_subprocess(*run_args(tmp_path / "model.xml", "synthetic:64x64:2", tmp_path / "out"))
    assert code == 2 and out == ""
    one_error_line(err, "model.xml is not an OpenVINO IR")


def test_a_model_that_fails_at_its_first_inference_is_one_line(tmp_path):
    boom = failing_onnx(tmp_path / "boom.onnx")  # 7 does not divide 256 x 256: fails when it runs
    code, out, err = run_subprocess(*run_args(boom, "synthetic:64x64:2", tmp_path / "out"))
    assert code == 2 and out == ""
    one_error_line(err, "boom fails at its first inference", "--backend")  # ONNX Runtime's own log line is off
    assert not (tmp_path / "out").exists()
    code, _, err = run_subprocess(*run_args(boom, "synthetic:64x64:2", tmp_path / "ov", "--backend", "openvino"))
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")


def test_segmenter_load_warms_the_model_up_and_checks_its_output(tmp_path):
    from edgeseg.errors import ModelError
    from edgeseg.segmenter import Segmenter

    half = half_output_onnx(tmp_path / "half.onnx", pool="MaxPool")
    with pytest.raises(ModelError, match=r"gives output \[1, 1, 128, 128\]"):
        Segmenter.load(half)
    with Segmenter.load(half, warm_up=False) as seg:  # a caller may skip the check (and meet the mismatch later)
        assert seg.input_size == 256


# ----------------------------------------------------------------------------------------------------- bundles


def test_bundle_run_settings_of_the_wrong_type_are_one_line(model, tmp_path):
    archive = tmp_path / "b.tar.gz"
    make_bundle([str(model)], archive, run={"source": "synthetic:48x40:2"})
    dest = tmp_path / "installed"
    install_bundle(archive, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["run"]["threads"] = "many"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("run", "--bundle", dest, "--no-display", "--no-record", "--out", tmp_path / "out")
    assert code == 2
    one_error_line(err, 'set threads to "many", which is not a whole number')
    assert not (tmp_path / "out").exists()
    manifest["run"]["threads"], manifest["run"]["tile"] = 2, "sometimes"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("install-bundle", dest, "--check")
    assert code == 2 and 'set tile to "sometimes", which is not one of auto, always, never' in one_error_line(err)


def test_bundle_refuses_a_checkpoint_the_device_cannot_run(tmp_path):
    out = tmp_path / "pt.tar.gz"
    code, _, err = run_cli("bundle", "--models", "fast_scnn", "--out", out)
    assert code == 2
    one_error_line(err, "fast_scnn is a torch file (fast_scnn.pt)", "onnx (.onnx), openvino (.xml + .bin)",
                   "fast_scnn-")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- recordings


def test_recording_is_h264_where_opencv_has_it_and_says_so_once_where_not(model, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", "--model", model, "--source", "synthetic:64x64:3", "--no-display",
                                "--out", out)
    assert code == 0, err
    start, summary = log_lines(out)[0], log_lines(out)[-1]
    assert start["type"] == "start" and start["codec"] == video_fourcc(".mp4")
    if h264_available():
        assert start["codec"] == "avc1" and "H.264" not in err + stdout
    else:  # the pip wheels of OpenCV: mp4v, and one note on the console
        assert start["codec"] == "mp4v"
        assert (err + stdout).count("no H.264 encoder") == 1
    cap = cv2.VideoCapture(summary["recording"])
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3


def test_the_codec_probe_falls_back_to_mp4v_for_mp4_and_mjpeg_for_avi(monkeypatch):
    import edgeseg.device.codecs as codecs

    monkeypatch.setattr(codecs, "h264_available", lambda: False)
    assert codecs.video_fourcc(".mp4") == "mp4v" and codecs.video_fourcc(".AVI") == "MJPG"
    assert codecs.codec_note("mp4v", ".mp4") and codecs.codec_note("MJPG", ".avi") is None
    monkeypatch.setattr(codecs, "h264_available", lambda: True)
    assert codecs.video_fourcc(".mp4") == "avc1" and codecs.video_fourcc(".avi") == "MJPG"
    assert codecs.codec_note("avc1", ".mp4") is None
