"""Calibration data: folders and lfw.bin files to NCHW tensors, subsets, digests, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from qfleet.errors import DatasetError
from qfleet.lfw.dataset import encode_image, write_lfw_bin
from qfleet.model.calibration import calibration_digest, evenly_spaced, image_files, load_calibration


def _image(value: int, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    return np.full((*size, 3), value, dtype=np.uint8)


def _folder(path: Path, values: list[int], *, fmt: str = "PNG", suffix: str = ".png") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for index, value in enumerate(values):
        (path / f"img_{index:02d}{suffix}").write_bytes(encode_image(_image(value), fmt))
    return path


def test_evenly_spaced_spans_the_set_and_is_deterministic() -> None:
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    assert evenly_spaced(10, 3) == [0, 4, 9]  # 4.5 rounds to even
    picked = evenly_spaced(1000, 300)
    assert len(set(picked)) == 300 and picked[0] == 0 and picked[-1] == 999
    assert picked == evenly_spaced(1000, 300)
    with pytest.raises(ValueError):
        evenly_spaced(3, 0)


def test_folder_gives_nchw_float_batches_in_sorted_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "faces", [10, 20, 30])
    nested = folder / "person"
    nested.mkdir()
    (nested / "a.JPG").write_bytes(encode_image(_image(200), "JPEG"))
    (folder / ".hidden.png").write_bytes(encode_image(_image(99), "PNG"))
    (folder / "readme.txt").write_text("not an image")

    tensors = load_calibration(folder)

    assert [t.shape for t in tensors] == [(1, 3, 112, 112)] * 4
    assert all(t.dtype == np.float32 for t in tensors)
    assert [float(t.mean()) for t in tensors[:3]] == [10.0, 20.0, 30.0]
    assert abs(float(tensors[3].mean()) - 200) < 3  # JPEG is lossy
    assert [p.name for p in image_files(folder)] == ["img_00.png", "img_01.png", "img_02.png", "a.JPG"]


def test_subset_size_limits_the_samples(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "faces", list(range(0, 100, 10)))
    tensors = load_calibration(folder, subset_size=3)
    assert [float(t.mean()) for t in tensors] == [0.0, 40.0, 90.0]


def test_other_sizes_are_resized_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.png").write_bytes(encode_image(_image(50, (96, 80)), "PNG"))
    with caplog.at_level(logging.WARNING):
        tensors = load_calibration(folder, input_hw=(64, 48))
    assert [t.shape for t in tensors] == [(1, 3, 64, 48)] * 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "80x96" in warnings[0].getMessage()


def test_lfw_bin_images_are_calibration_samples(tmp_path: Path) -> None:
    images = [encode_image(_image(v), "PNG") for v in (1, 2, 3, 4, 5, 6)]
    write_lfw_bin(tmp_path / "lfw.bin", images, [True, False, True])
    tensors = load_calibration(tmp_path / "lfw.bin", subset_size=4)
    assert len(tensors) == 4
    assert float(tensors[0].mean()) == 1.0 and float(tensors[-1].mean()) == 6.0


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "corrupt-lfw"])
def test_errors_name_the_input(tmp_path: Path, case: str) -> None:
    if case == "missing":
        path, expected = tmp_path / "absent", "absent"
    elif case == "empty":
        path = tmp_path / "empty"
        path.mkdir()
        (path / "notes.txt").write_text("x")
        expected = "no images"
    elif case == "corrupt":
        path = _folder(tmp_path / "faces", [1, 2])
        (path / "img_01.png").write_bytes(b"not really a png")
        expected = "img_01.png"
    else:
        path = tmp_path / "lfw.bin"
        write_lfw_bin(path, [encode_image(_image(1), "PNG"), b"garbage"], [True])
        expected = "image 1 (pair 0)"
    with pytest.raises(DatasetError) as info:
        load_calibration(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_digest_is_deterministic_and_tracks_names_and_contents(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "faces", [1, 2, 3])
    first = calibration_digest(folder)
    assert first == calibration_digest(folder)
    (folder / "img_00.png").rename(folder / "img_99.png")
    renamed = calibration_digest(folder)
    assert renamed != first
    (folder / "img_99.png").write_bytes(encode_image(_image(4), "PNG"))
    assert calibration_digest(folder) not in (first, renamed)
    (folder / "notes.txt").write_text("ignored")
    assert calibration_digest(folder) == calibration_digest(folder)

    data = tmp_path / "lfw.bin"
    data.write_bytes(b"abc")
    assert calibration_digest(data) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
