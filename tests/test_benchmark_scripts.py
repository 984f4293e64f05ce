"""The benchmark scripts run (figures are not checked: tests check behaviour, not timings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_overhead_prints_ratios_against_plain_loop_and_lightning_floor() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_overhead.py"), "--models",
         "simple_cnn", "--n", "80", "--epochs", "2", "--warmup", "0", "--pairs", "1",
         "--floor"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith("simple_cnn"))
    numbers = re.findall(r"\d+\.\d+", row)
    assert len(numbers) == 7, row  # plain, geofuse, ratio, range (2), one-off end, floor
    plain, geofuse, ratio = (float(x) for x in numbers[:3])
    assert plain > 0 and geofuse > 0
    half = 0.0005  # seconds are printed to 3 decimals, ratios to 2
    low, high = (geofuse - half) / (plain + half), (geofuse + half) / (plain - half)
    assert low - 0.005 <= ratio <= high + 0.005, row
    assert float(numbers[6]) > 0


def test_temporal_throughput_prints_lstm_unet_samples_per_second_and_peak_rss() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "temporal_throughput.py"), "--quick",
         "--device", "cpu", "--encoders", "resnet18"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith("resnet18"))
    numbers = re.findall(r"\d+(?:\.\d+)?", row.removeprefix("resnet18"))
    assert len(numbers) == 8, row  # geofuse, plain samples/s, ratio, range (2), RSS (3)
    geofuse, plain, ratio = (float(x) for x in numbers[:3])
    assert geofuse > 0 and plain > 0
    half = 0.005  # samples/s and ratios are printed to 2 decimals
    low, high = (plain - half) / (geofuse + half), (plain + half) / (geofuse - half)
    assert low - half <= ratio <= high + half, row  # ratio of times = inverse of throughputs
    assert all(float(x) > 0 for x in numbers[5:]), row
    assert "16 x 16 px" in out and "T 3 x C 4" in out


def test_mapping_prints_pixels_per_second_ratio_and_peak_rss_of_both_map_paths() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mapping.py"), "--quick",
         "--naive-pixels", "600", "--naive-read-pixels", "100", "--train-patches", "128"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout

    def numbers(prefix: str) -> list[float]:
        row = next(line for line in out.splitlines() if line.startswith(prefix))
        figures = row[46:]  # after the method column: pixels, seconds, px/s, ratio, RSS
        return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", figures)]

    naive = numbers("naive (a)")
    geofuse = numbers("geofuse predict, simple_cnn")
    dense = numbers("geofuse predict, unet_early")
    assert naive[0] == 600 and geofuse[0] == dense[0] == 256 * 256
    assert naive[2] > 0 and geofuse[2] > 0 and dense[2] > 0
    ratio = geofuse[2] / naive[2]  # px/s are printed as whole numbers, ratios to 1 decimal
    assert abs(naive[3] - ratio) <= 0.05 + 0.01 * ratio, (naive, geofuse)
    assert len(geofuse) == len(dense) == 5 and geofuse[4] > 0 and dense[4] > 0  # peak RSS MB
    agreement = re.search(r"same pixels: ([\d.]+)% \(a\), ([\d.]+)% \(b\)", out)
    assert agreement and float(agreement[1]) >= 95 and float(agreement[2]) >= 95, out
    assert "target >= 20x" in out and "target < 2,048 MB" in out


def test_multi_device_prints_throughput_against_one_device_in_32_bit() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "multi_device.py"), "--n", "80",
         "--patch-size", "8", "--epochs", "2", "--devices", "1", "--precision",
         "32-true,bf16-mixed"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("1 ")]
    assert [row[1] for row in rows] == ["32-true", "bf16-mixed"], out
    for row in rows:
        startup, epoch_s, patches_s, _, accuracy = (float(x) for x in row[2:])
        assert epoch_s >= 0 and startup >= 0 and patches_s > 0 and 0 <= accuracy <= 1
        if epoch_s >= 0.01:  # 56 training patches; seconds printed to 3 decimals
            assert 56 / (epoch_s + 0.0005) - 0.05 <= patches_s <= 56 / (epoch_s - 0.0005) + 0.05
    assert float(rows[0][5]) == 1.0
    # printed to 1 and 2 decimals: the ratio of the printed throughputs, within rounding
    assert float(rows[1][5]) == pytest.approx(float(rows[1][4]) / float(rows[0][4]),
                                              rel=0.01, abs=0.01)


def test_active_learning_scores_every_strategy_against_the_true_land_cover() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "active_learning.py"), "--size", "4000",
         "--epochs", "1", "--start", "4", "--add", "10", "--seeds", "0"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    scores = {}
    for name in ("first points", "first + 10 suggest", "first + 10 random",
                 "first + 10 stratified"):
        row = next(line for line in out.splitlines() if line.startswith(name))
        oa, _, f1, _ = (float(x) for x in re.findall(r"\d+\.\d+", row)[:4])
        assert 0 < oa <= 1 and 0 < f1 <= 1, row
        scores[name] = oa
    diff = float(re.search(r"suggest - random: OA ([+-]\d+\.\d+)", out).group(1))
    assert diff == pytest.approx(scores["first + 10 suggest"] - scores["first + 10 random"],
                                 abs=0.0015)
