import platform
import time

import pytest

from edgeseg.device.hardware import (
    cpu_features,
    cpu_snapshot,
    decode_throttled,
    format_report,
    hardware_report,
    other_cpu_share,
    parse_cpuinfo,
    temperatures,
    thermal_sample,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i9-9900K CPU @ 3.60GHz
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_vnni
processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i9-9900K CPU @ 3.60GHz
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_vnni
"""

PI5_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\n"
    "CPU revision\t: 1\n\n"
    for i in range(4)
) + "Revision\t: d04170\nSerial\t\t: 0000000000000000\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"


def test_x86_cpuinfo_gives_model_cores_and_the_instruction_sets_that_matter():
    cpu = parse_cpuinfo(X86_CPUINFO)
    assert cpu["model"] == "Intel(R) Core(TM) i9-9900K CPU @ 3.60GHz"
    assert cpu["logical_cores"] == 2
    feats = cpu_features(cpu["flags"], "x86_64")
    assert feats["avx2"] and feats["avx512"] and feats["avx512_vnni"]
    assert not feats["amx_int8"] and not feats["amx_bf16"] and not feats["avx_vnni"]


def test_raspberry_pi_5_cpuinfo_names_the_cortex_a76_and_its_dot_product():
    cpu = parse_cpuinfo(PI5_CPUINFO)
    assert cpu["model"] == "Cortex-A76"
    assert cpu["logical_cores"] == 4
    feats = cpu_features(cpu["flags"], "aarch64")
    assert feats["neon"] and feats["dotprod"] and feats["fp16"]
    assert not feats["i8mm"] and not feats["sve"]
    assert "avx2" not in feats


def test_32_bit_arm_neon_flag_counts_as_neon():
    assert cpu_features(["half", "thumb", "neon", "vfpv4"], "armv7l")["neon"] is True


def test_throttled_flags_are_decoded_bit_by_bit():
    t = decode_throttled("throttled=0x50005\n")
    assert t["value"] == 0x50005
    assert t["under_voltage"] and t["throttled"] and t["under_voltage_occurred"] and t["throttled_occurred"]
    assert not t["frequency_capped"] and not t["soft_temperature_limit"] and not t["frequency_capped_occurred"]
    ok = decode_throttled("throttled=0x0")
    assert ok["value"] == 0 and not any(v for k, v in ok.items() if k not in ("raw", "value"))
    assert decode_throttled("VCHI initialization failed")["value"] is None


@pytest.fixture
def pi_root(tmp_path):
    """The files a Raspberry Pi 5 exposes, under a fake root."""
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    (tmp_path / "proc" / "cpuinfo").write_text(PI5_CPUINFO)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:        8245248 kB\nMemFree:  100 kB\n")
    zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("52500\n")
    (zone / "type").write_text("cpu-thermal\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    return tmp_path


def test_report_of_a_raspberry_pi_has_board_temperature_and_arm_features(pi_root):
    r = hardware_report(pi_root, arch="aarch64")
    assert r["board"] == "Raspberry Pi 5 Model B Rev 1.0" and r["raspberry_pi"] is True
    assert r["cpu"]["model"] == "Cortex-A76" and r["cpu"]["logical_cores"] == 4
    assert r["cpu"]["features"]["dotprod"] is True
    assert r["memory_gib"] == pytest.approx(7.86, abs=0.01)
    assert r["os"]["distribution"] == "Debian GNU/Linux 12 (bookworm)"
    assert r["thermal"]["before"]["temperature_c"] == {"cpu-thermal": 52.5}
    r["thermal"]["after"] = thermal_sample(pi_root)
    text = format_report(r)
    assert "Board: Raspberry Pi 5 Model B Rev 1.0" in text
    assert "Thermal before: cpu-thermal 52.5 °C" in text and "Thermal after: cpu-thermal 52.5 °C" in text
    assert "dotprod" in text


def test_temperatures_skip_unreadable_zones(tmp_path):
    good = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
    bad = tmp_path / "sys" / "class" / "thermal" / "thermal_zone1"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "temp").write_text("61000")
    (bad / "temp").write_text("unavailable")
    assert temperatures(tmp_path) == {"thermal_zone0": 61.0}


def test_report_of_this_machine_names_python_libraries_and_a_pc_without_board():
    r = hardware_report()
    assert r["python"] == platform.python_version()
    assert r["cpu"]["architecture"] == platform.machine()
    assert r["cpu"]["logical_cores"] >= r["cpu"]["usable_cores"] >= 1
    assert {"numpy", "onnxruntime", "openvino", "edgeseg"} <= set(r["libraries"])
    assert set(r["thermal"]) == {"before", "after"}
    assert f"Python {platform.python_version()}" in format_report(r)


def test_other_cpu_share_subtracts_this_process_from_the_machine():
    before = {"wall": 100.0, "busy_s": 50.0, "own_s": 1.0}
    after = {"wall": 102.0, "busy_s": 53.0, "own_s": 2.0}  # 3 busy CPU-s in 2 s on 2 cores, 1 of them ours
    assert other_cpu_share(before, after, cores=2) == 0.5
    assert other_cpu_share(before, {**after, "busy_s": 51.0}, cores=2) == 0.0  # clamped, never negative
    assert other_cpu_share(before, None, cores=2) is None


def test_cpu_snapshot_counts_this_process_busy_time():
    a = cpu_snapshot()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    b = cpu_snapshot()
    assert b["own_s"] - a["own_s"] >= 0.15
    assert b["busy_s"] - a["busy_s"] >= 0.1  # the machine saw at least our own work
