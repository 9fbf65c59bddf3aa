"""Frame sources of the live runtime: files written by the tests, a fake picamera2, cameras that fail."""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from edgeseg.device.sources import (
    ImageFolderSource,
    Looped,
    MissingPicamera2,
    OpenCVCameraSource,
    Paced,
    SourceError,
    SourceFailed,
    SyntheticSource,
    TiffStackSource,
    VideoSource,
    lores_size_for,
    open_source,
    yuv420_to_rgb,
)

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "edge" / "samples" / "clip" / "cancer_cell_migration_crop.tif"


def write_video(path: Path, n: int, size=(64, 48), fps=12.0, fourcc="MJPG") -> list[int]:
    """A video whose frame i is a flat grey level 10 + 8 i (with a white square so codecs keep detail)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    levels = []
    for i in range(n):
        level = 10 + (8 * i) % 240
        img = np.full((h, w, 3), level, np.uint8)
        img[5:15, 5:15] = 255
        writer.write(img)
        levels.append(level)
    writer.release()
    return levels


# --------------------------------------------------------------------------- files


def test_video_file_gives_every_frame_in_order_as_bgr(tmp_path):
    path = tmp_path / "clip.avi"
    levels = write_video(path, 12)
    with open_source(path) as src:
        assert isinstance(src, VideoSource) and not src.live
        assert src.fps == pytest.approx(12.0) and src.length == 12
        frames = list(src)
    assert [f.index for f in frames] == list(range(12))
    assert all(f.order == "bgr" and f.image.shape == (48, 64, 3) for f in frames)
    got = [float(np.median(f.image[20:, 20:])) for f in frames]
    assert np.allclose(got, levels, atol=3)


def test_video_truncated_mid_file_fails_after_the_good_frames(tmp_path):
    path = tmp_path / "cut.avi"
    write_video(path, 30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = open_source(path)
    good = 0
    with pytest.raises(SourceFailed, match=r"stopped after \d+ of 30 frames"):
        while src.read() is not None:
            good += 1
    src.close()
    assert 5 <= good < 25
    assert SourceFailed("x").exit_code == 4


def test_unreadable_and_missing_sources_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="cannot decode the video"):
        open_source(junk)
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "nope.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no image"):
        open_source(empty)
    with pytest.raises(SourceError, match="WIDTHxHEIGHT"):
        open_source("synthetic:big")
    assert SourceError("x").exit_code == 2


def test_image_folder_reads_in_name_order_and_skips_a_corrupt_file(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    gray16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    cv2.imwrite(str(folder / "b.png"), gray16)
    (folder / "c.png").write_bytes(b"not a png")
    cv2.imwrite(str(folder / "d.jpg"), np.full((20, 30, 3), 90, np.uint8))
    (folder / "notes.txt").write_text("ignored")
    events = []
    with open_source(folder, on_event=events.append) as src:
        assert isinstance(src, ImageFolderSource) and src.length == 4
        frames = list(src)
    assert [f.meta["file"] for f in frames] == ["a.png", "b.png", "d.jpg"]
    assert frames[0].order == "rgb" and frames[0].image[0, 0].tolist() == [200, 0, 0]
    assert frames[1].image.dtype == np.uint16 and np.array_equal(frames[1].image, gray16)
    assert [e["event"] for e in events] == ["unreadable_image"] and "c.png" in events[0]["file"]


def test_tiff_stack_pages_come_back_exactly(tmp_path):
    stack = np.random.default_rng(1).integers(0, 4096, size=(5, 24, 32), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    with open_source(path) as src:
        assert isinstance(src, TiffStackSource) and src.length == 5
        frames = list(src)
    assert len(frames) == 5
    for f, page in zip(frames, stack, strict=True):
        assert f.image.dtype == np.uint16 and np.array_equal(f.image, page)


def test_tiff_hyperstack_channels_become_one_colour_frame(tmp_path):
    data = np.zeros((3, 2, 16, 16), np.uint16)  # T, C, Y, X
    data[:, 0] = 1000
    data[:, 1] = 3000
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX", "fps": 5.0})
    with open_source(path) as src:
        assert src.length == 3 and src.fps == pytest.approx(5.0)
        frames = list(src)
    assert len(frames) == 3
    img = frames[0].image
    assert img.shape == (16, 16, 3)  # two channels -> red, green, empty blue
    assert img[0, 0].tolist() == [1000, 3000, 0]


def test_shipped_clip_is_the_16_bit_time_lapse():
    with open_source(CLIP) as src:
        assert src.length == 48
        first = src.read()
    assert first.image.shape == (130, 130) and first.image.dtype == np.uint16


def test_synthetic_frames_move_are_deterministic_and_know_their_count():
    a = list(SyntheticSource((80, 60), 6, seed=3))
    b = list(SyntheticSource((80, 60), 6, seed=3))
    assert len(a) == 6 and a[0].image.shape == (60, 80) and a[0].image.dtype == np.uint8
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].image, a[5].image)  # the nuclei move
    assert a[0].meta["count"] >= 2 and a[0].meta["count"] % 2 == 0  # touching pairs
    n_bright = cv2.connectedComponents((a[0].image > 120).astype(np.uint8))[0] - 1
    assert 1 <= n_bright <= a[0].meta["count"]  # touching discs merge into fewer blobs
    f16 = SyntheticSource((64, 64), 1, bits=16).read()
    assert f16.image.dtype == np.uint16 and f16.image.max() > 50000
    src = open_source("synthetic:40x30:4")
    assert [f.image.shape for f in src] == [(30, 40)] * 4


def test_loop_replays_a_file_with_growing_indices(tmp_path):
    path = tmp_path / "three.tif"
    tifffile.imwrite(path, np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8), photometric="minisblack")
    src = open_source(path, loop=True)
    assert isinstance(src, Looped)
    frames = [src.read() for _ in range(7)]
    src.close()
    assert [f.index for f in frames] == list(range(7))
    assert [int(f.image[0, 0]) for f in frames] == [0, 64, 128, 0, 64, 128, 0]


def test_loop_replays_a_small_file_from_memory_after_the_first_round(tmp_path, monkeypatch):
    """The second round does not open the file again: the frames are those of the first, read-only, and the rounds
    and indices go on; a file over the memory bound, and a folder, are read from disk every round."""
    import edgeseg.device.sources as sources_module

    path = tmp_path / "three.tif"
    tifffile.imwrite(path, np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8), photometric="minisblack")
    opened = []
    real_tiff = sources_module.TiffStackSource

    class CountedTiff(real_tiff):
        def __init__(self, *args, **kwargs):
            opened.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sources_module, "TiffStackSource", CountedTiff)
    src = open_source(path, loop=True)
    frames = [src.read() for _ in range(10)]
    assert len(opened) == 2  # the first round, and the one whose first read ended it; never again
    assert [int(f.image[0, 0]) for f in frames] == [0, 64, 128] * 3 + [0]
    assert [f.index for f in frames] == list(range(10)) and src.rounds == 4
    assert frames[4].image is frames[1].image and frames[6].image is frames[0].image  # from memory
    assert not frames[6].image.flags.writeable
    src.close()

    opened.clear()
    monkeypatch.setattr(sources_module, "REPLAY_MAX_BYTES", 2 * 8 * 8 * 2)  # two of the three frames fit
    src = open_source(path, loop=True)
    frames = [src.read() for _ in range(7)]
    src.close()
    assert len(opened) == 3 and [int(f.image[0, 0]) for f in frames] == [0, 64, 128, 0, 64, 128, 0]

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8), 10 * i, np.uint8))
    src = open_source(folder, loop=True)
    first = [src.read() for _ in range(2)]
    cv2.imwrite(str(folder / "2.png"), np.full((8, 8), 99, np.uint8))  # a file that came meanwhile is seen
    later = [src.read() for _ in range(3)]
    src.close()
    assert [int(f.image[0, 0]) for f in first + later] == [0, 10, 0, 10, 99]


def test_pacing_plays_at_the_rate_and_drops_what_a_slow_reader_misses(monkeypatch):
    # on a fake clock (only sleeping moves it): the schedule is exact, whatever the machine's speed
    import edgeseg.device.sources as sources_module

    clock = types.SimpleNamespace(now=100.0)
    fake = types.SimpleNamespace(perf_counter=lambda: clock.now, monotonic=lambda: clock.now, time=time.time,
                                 sleep=lambda s: setattr(clock, "now", clock.now + max(s, 0.0)))
    monkeypatch.setattr(sources_module, "time", fake)
    src = Paced(SyntheticSource((32, 32), 40), fps=100.0)
    first = [src.read() for _ in range(5)]
    assert clock.now - 100.0 == pytest.approx(0.04)  # 5 frames at 100 fps: the 5th is due 40 ms after the first
    assert [f.index for f in first] == list(range(5)) and src.dropped == 0  # a reader in time misses nothing
    got = []
    while (f := src.read()) is not None:
        got.append(f)
        fake.sleep(0.025)  # a reader at 40 fps
    assert 10 < src.dropped < 30  # it sees about 2 frames in 5
    assert [f.index for f in got] == sorted({f.index for f in got}) and got[-1].index <= 39
    assert len(first) + len(got) + src.dropped == 40


# --------------------------------------------------------------------------- OpenCV cameras


class FakeCapture:
    """Stands in for cv2.VideoCapture (no camera here): ``script`` says how each open behaves."""

    def __init__(self, plan: dict, index: int):
        self.plan = plan
        plan["opens"] += 1
        attempt = plan["opens"]
        self.opened = attempt not in plan.get("fail_opens", ())
        self.frames_left = plan["frames_per_open"].get(attempt, 10**9)
        self.props = {}
        self.n = 0

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value
        self.plan.setdefault("set", []).append((prop, value))
        return True

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        time.sleep(self.plan.get("period", 0.002))
        if self.frames_left <= 0:
            return False, None
        self.frames_left -= 1
        self.plan["produced"] += 1
        self.n += 1
        img = np.full((24, 32, 3), self.plan["produced"] % 256, np.uint8)
        return True, img

    def release(self):
        self.plan["released"] += 1


def fake_camera(**plan):
    state = {"opens": 0, "produced": 0, "released": 0, "frames_per_open": {}, **plan}
    return state, (lambda index: FakeCapture(state, index))


def test_no_camera_is_a_one_line_error():
    state, factory = fake_camera(fail_opens={1})
    with pytest.raises(SourceError, match="no camera at cam:0"):
        OpenCVCameraSource(0, capture_factory=factory)
    with pytest.raises(SourceError, match="no camera at cam:97"):  # the real OpenCV, on a machine without one
        open_source("cam:97")


def _until(cond, guard_s=60.0):
    """Wait for ``cond()`` (a count, not a time); the deadline only stops a hang."""
    end = time.monotonic() + guard_s
    while not cond():
        assert time.monotonic() < end, "hung: the condition never came true"
        time.sleep(0.001)


def test_camera_keeps_only_the_latest_frame_and_counts_drops():
    state, factory = fake_camera(period=0.002)
    with OpenCVCameraSource(0, capture_factory=factory) as cam:
        assert cam.live and (cv2.CAP_PROP_BUFFERSIZE, 1) in state["set"]
        frames = []
        for _ in range(8):
            frames.append(cam.read())
            seen = state["produced"]
            _until(lambda seen=seen: state["produced"] >= seen + 5)  # a slow consumer: the camera runs 5 frames ahead
        dropped = cam.dropped
    levels = [int(f.image[0, 0, 0]) for f in frames]
    assert levels == sorted(levels) and len(set(levels)) == 8  # always a newer frame
    assert dropped >= 8 * 3  # of the 5 frames made while the consumer was away, at most 1 (the latest) is taken
    assert state["produced"] >= len(frames) + dropped


def test_camera_that_disappears_is_retried_with_backoff_then_fails_cleanly():
    state, factory = fake_camera(frames_per_open={1: 5}, fail_opens=set(range(2, 20)))
    events = []
    cam = OpenCVCameraSource(0, events.append, capture_factory=factory, retries=3, backoff_s=0.01)
    got = 0
    with pytest.raises(SourceFailed, match="3 reconnection attempts failed"):
        while cam.read() is not None:
            got += 1
    cam.close()
    kinds = [e["event"] for e in events]
    assert kinds == ["camera_lost", "camera_retry", "camera_retry", "camera_retry", "camera_gone"]
    # the backoff schedule (what an "ends within 2 s" check stood for): 10, 20, 40 ms, not the defaults' seconds
    assert [e["waited_s"] for e in events if e["event"] == "camera_retry"] == [0.01, 0.02, 0.04]
    assert 1 <= got <= 5
    assert state["opens"] == 4


def test_camera_that_comes_back_keeps_streaming():
    state, factory = fake_camera(frames_per_open={1: 3}, fail_opens={2})
    events = []
    with OpenCVCameraSource(0, events.append, capture_factory=factory, retries=4, backoff_s=0.01) as cam:
        frames = [cam.read() for _ in range(6)]
        assert cam.reconnects == 1
    assert all(f is not None for f in frames)
    assert [e["event"] for e in events] == ["camera_lost", "camera_retry", "camera_back"]


def test_camera_read_can_be_cancelled_while_waiting():
    state, factory = fake_camera(frames_per_open={1: 1}, fail_opens=set(range(2, 100)))
    # 50 retries, up to 4 s apart, and no frame timeout: only the cancel can end this read with None (the retries
    # running out would raise SourceFailed, minutes later)
    cam = OpenCVCameraSource(0, capture_factory=factory, retries=50, backoff_s=0.2, frame_timeout_s=3600)
    assert cam.read() is not None
    threading.Timer(0.2, cam.cancel).start()
    assert cam.read() is None
    cam.close()


# --------------------------------------------------------------------------- picamera2


class FakePicamera2:
    """Records the calls edgeseg makes; delivers a known scene in both streams."""

    calls: list = []
    scene = None  # RGB uint8, the lores image the camera "sees"
    stride_pad = 0

    def __init__(self, camera_num=0):
        self.calls.append(("init", camera_num))
        self.config = None

    @staticmethod
    def global_camera_info():
        return [{"Model": "imx708", "Num": 0}]

    def create_video_configuration(self, main=None, lores=None, buffer_count=None, **kw):
        self.calls.append(("create_video_configuration", main, lores, buffer_count))
        return {"main": dict(main), "lores": dict(lores), "controls": {"FrameDurationLimits": (33333, 33333)}}

    def align_configuration(self, config):
        self.calls.append(("align_configuration",))

    def configure(self, config):
        self.calls.append(("configure", config["main"]["format"], config["lores"]["format"]))
        self.config = config

    def camera_configuration(self):
        return self.config

    def start(self):
        self.calls.append(("start",))

    def capture_arrays(self, names):
        self.calls.append(("capture_arrays", tuple(names)))
        time.sleep(0.005)
        w, h = self.config["lores"]["size"]
        yuv = cv2.cvtColor(cv2.resize(self.scene, (w, h)), cv2.COLOR_RGB2YUV_I420)
        if self.stride_pad:
            yuv = pad_stride(yuv, w, h, w + self.stride_pad)
        mw, mh = self.config["main"]["size"]
        main = cv2.cvtColor(cv2.resize(self.scene, (mw, mh)), cv2.COLOR_RGB2BGR)  # RGB888 = BGR bytes
        return [main, yuv], {"SensorTimestamp": 0}

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


def pad_stride(i420: np.ndarray, w: int, h: int, stride: int) -> np.ndarray:
    """Lay a packed I420 image out with row stride ``stride`` (Y rows stride bytes, U/V rows stride/2)."""
    flat = i420.reshape(-1)
    y = flat[: w * h].reshape(h, w)
    u = flat[w * h : w * h + w * h // 4].reshape(h // 2, w // 2)
    v = flat[w * h + w * h // 4 :].reshape(h // 2, w // 2)
    Y = np.zeros((h, stride), np.uint8)
    Y[:, :w] = y
    U = np.zeros((h // 2, stride // 2), np.uint8)
    U[:, : w // 2] = u
    V = np.zeros((h // 2, stride // 2), np.uint8)
    V[:, : w // 2] = v
    return np.concatenate([Y.ravel(), U.ravel(), V.ravel()]).reshape(h * 3 // 2, stride)


@pytest.fixture
def fake_picamera2(monkeypatch):
    rng = np.random.default_rng(0)
    scene = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    FakePicamera2.calls = []
    FakePicamera2.scene = scene
    FakePicamera2.stride_pad = 0
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return FakePicamera2


@pytest.mark.parametrize("stride_pad", [0, 64])
def test_picam_segments_the_lores_stream_and_shows_the_main_one(fake_picamera2, stride_pad):
    fake_picamera2.stride_pad = stride_pad
    with open_source("picam", model_size=256) as cam:
        frame = cam.read()
        assert cam.live and cam.fps == pytest.approx(30.0, rel=0.01)
    calls = fake_picamera2.calls
    names = [c[0] for c in calls]
    assert names[:5] == ["init", "create_video_configuration", "align_configuration", "configure", "start"]
    _, main, lores, _ = calls[1]
    assert main == {"size": (640, 480), "format": "RGB888"}
    assert lores["format"] == "YUV420" and lores["size"] == (342, 256)  # 4:3, shorter side = model size
    assert ("capture_arrays", ("main", "lores")) in calls
    assert names[-2:] == ["stop", "close"]
    assert frame.order == "rgb" and frame.image.shape == (256, 342, 3)
    expected = cv2.resize(fake_picamera2.scene, (342, 256))
    assert np.abs(frame.image.astype(int) - expected).mean() < 6  # YUV 4:2:0 round trip
    assert frame.display.shape == (480, 640, 3)
    assert np.array_equal(frame.display, cv2.cvtColor(fake_picamera2.scene, cv2.COLOR_RGB2BGR))


def test_picam_main_size_and_camera_index_come_from_the_spec(fake_picamera2):
    with pytest.raises(SourceError, match="no Raspberry Pi camera at picam:1"):
        open_source("picam:1@1280x720")
    with open_source("picam:0@1280x720", model_size=256) as cam:
        assert cam.main_size == (1280, 720) and cam.lores_size == (456, 256)


def test_missing_picamera2_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(MissingPicamera2) as info:
        open_source("picam")
    msg = str(info.value)
    assert "sudo apt install python3-picamera2" in msg and "--system-site-packages" in msg
    assert info.value.exit_code == 3 and "\n" not in msg


def test_yuv420_conversion_and_lores_sizes():
    rgb = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rgb = cv2.GaussianBlur(rgb, (7, 7), 3)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    plain = yuv420_to_rgb(i420, 96, 64)
    strided = yuv420_to_rgb(pad_stride(i420, 96, 64, 128), 96, 64)
    assert np.array_equal(plain, strided)
    assert np.abs(plain.astype(int) - rgb).mean() < 4
    assert lores_size_for((640, 480), 256) == (342, 256)
    assert lores_size_for((1920, 1080), 256) == (456, 256)
    assert lores_size_for((200, 150), 256) == (200, 150)  # never larger than main
