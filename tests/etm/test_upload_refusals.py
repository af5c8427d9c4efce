"""Upload refusals in the domain (issue #5, point 2), each with its message: ONNX opsets and operator
domains the runtime lacks, outputs whose real shape contradicts the graph, zip bombs, hidden and
non-image archive members, decompression-bomb and corrupt images. The HTTP statuses are checked
against the running service in test_runtime_faults.py."""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from etm.datasets import load_dataset
from etm.datasets.archives import ArchiveLimits, safe_extract
from etm.datasets.images import check_image
from etm.errors import ModelRefused, UploadTooLarge
from etm.models.loader import load_model
from etm.models.onnx_support import supported_opsets
from tests.helpers.faulty import conv_net, custom_domain, newer_opset_than_runtime, with_opset, wrong_shape


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conv_net(tmp_path_factory.mktemp("faulty") / "base.onnx")


def test_supported_opsets_come_from_the_runtime() -> None:
    ops = supported_opsets()
    assert ops[""] >= 17 and "ai.onnx.ml" in ops and "com.microsoft" in ops  # what ONNX Runtime registers


def test_refuses_opset_newer_than_the_runtime(tmp_path: Path, base_model: Path) -> None:
    newest = supported_opsets()[""]
    path = newer_opset_than_runtime(base_model, tmp_path / "new.onnx")
    msg = (
        f"new.onnx needs opset {newest + 1} of domain 'ai.onnx', but onnxruntime {onnxruntime.__version__} supports "
        f"up to {newest}; export with opset_version={newest} or lower"
    )
    with pytest.raises(ModelRefused, match=msg.replace("(", r"\(").replace(".", r"\.")):
        load_model(path)
    assert load_model(with_opset(base_model, tmp_path / "ok.onnx", newest)).num_outputs == 2  # the newest is fine


def test_refuses_custom_operator_domain(tmp_path: Path, base_model: Path) -> None:
    path = custom_domain(base_model, tmp_path / "custom.onnx")
    with pytest.raises(ModelRefused) as err:
        load_model(path)
    assert str(err.value).startswith(
        f"custom.onnx imports operator domain 'com.example.custom' (version 1), which onnxruntime "
        f"{onnxruntime.__version__} does not provide (custom operators are not loaded); supported: ai.onnx <= "
    )
    assert str(err.value).endswith("Export the model with standard ONNX operators only")


def test_refuses_output_whose_real_shape_contradicts_the_graph(tmp_path: Path, base_model: Path) -> None:
    path = wrong_shape(base_model, tmp_path / "shape.onnx")
    with pytest.raises(ModelRefused) as err:
        load_model(path)
    assert str(err.value).startswith(
        "shape.onnx fails on a probe batch of 2 blank 32x32 images: the model output has shape [1, 4] on a batch "
        "of 2 images, but [2, 2] was expected"
    )


# -- archives ------------------------------------------------------------------------------------


def _png(size: tuple[int, int] = (8, 8), seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` pixels, with a token of data: nothing big is written."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_zip_member_beyond_the_compression_ratio_is_refused(tmp_path: Path) -> None:
    arch = tmp_path / "bomb.zip"
    with zipfile.ZipFile(arch, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("real/a.png", _png())
        zf.writestr("real/bomb.png", b"\0" * (8 << 20))  # 8 MiB of zeros deflate to ~8 KiB: ratio ~1000
    with pytest.raises(UploadTooLarge) as err:
        safe_extract(arch, tmp_path / "out", ArchiveLimits(max_ratio=200))
    assert str(err.value).startswith("archive member 'real/bomb.png' inflates from ")
    assert "a compression ratio above 200 (ETM_MAX_COMPRESSION_RATIO), as in a zip bomb" in str(err.value)
    assert not (tmp_path / "out" / "real" / "bomb.png").exists() or (
        (tmp_path / "out" / "real" / "bomb.png").stat().st_size <= 2 << 20  # stopped early, never fully written
    )
    # A generous limit lets the same archive through: the ratio, not the content, was refused.
    assert safe_extract(arch, tmp_path / "out2", ArchiveLimits(max_ratio=5000)).files == 2


def test_tar_gz_beyond_the_compression_ratio_is_refused(tmp_path: Path) -> None:
    arch = tmp_path / "bomb.tar.gz"
    data = b"\0" * (8 << 20)
    with tarfile.open(arch, "w:gz") as tf:
        info = tarfile.TarInfo("real/zeros.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UploadTooLarge, match=r"archive member 'real/zeros.png' takes the archive \(\d+ bytes\) past "
                                            r"\d+ bytes extracted: a compression ratio above 200"):
        safe_extract(arch, tmp_path / "out", ArchiveLimits())


def test_small_compressible_files_are_not_bombs(tmp_path: Path) -> None:
    arch = tmp_path / "ok.zip"
    with zipfile.ZipFile(arch, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.csv", "split,label,path\n" + "test,real,a.png\n" * 20_000)  # ~300 KB, ratio > 200
    assert safe_extract(arch, tmp_path / "out", ArchiveLimits()).files == 1  # below the 1 MiB floor


def test_hidden_and_non_image_members_are_skipped_and_listed(tmp_path: Path) -> None:
    arch = tmp_path / "ds.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        zf.writestr("ds/real/a.png", _png(seed=1))
        zf.writestr("ds/fake/b.png", _png(seed=2))
        zf.writestr("ds/README.txt", "about this dataset")
        zf.writestr("ds/.DS_Store", b"\0\0\0\1Bud1")
        zf.writestr("ds/real/._a.png", b"AppleDouble")
        zf.writestr("ds/tools/make.py", "print('never run')")
        zf.writestr("ds/.git/config", "[core]")
    info = safe_extract(arch, tmp_path / "out", ArchiveLimits())
    assert info.files == 2
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()) \
        == ["ds/fake/b.png", "ds/real/a.png"]
    assert {s["path"]: s["reason"] for s in info.skipped} == {
        "ds/README.txt": "not an image (.txt); only manifest.csv and images are extracted",
        "ds/.DS_Store": "hidden file or folder (.DS_Store), e.g. .DS_Store; not part of a dataset",
        "ds/real/._a.png": "hidden file or folder (._a.png), e.g. .DS_Store; not part of a dataset",
        "ds/tools/make.py": "not an image (.py); only manifest.csv and images are extracted",
        "ds/.git/config": "hidden file or folder (.git), e.g. .DS_Store; not part of a dataset",
    }


# -- images --------------------------------------------------------------------------------------


def test_decompression_bomb_and_corrupt_images_are_skipped_and_listed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "ok.png").write_bytes(_png(seed=3))
    (tmp_path / "real" / "bomb.png").write_bytes(_bomb_png(30_000, 30_000))
    whole = _png((64, 64), seed=4)
    (tmp_path / "real" / "broken.png").write_bytes(whole[: len(whole) // 2])  # truncated: decoding fails
    ds = load_dataset(tmp_path)
    reasons = {s.path: s.reason for s in ds.skipped}
    assert [it.key for it in ds.items] == ["real/ok.png"]
    assert reasons["real/bomb.png"] == (
        "image too large: 900000000 pixels, above the limit of 100000000 (ETM_MAX_IMAGE_PIXELS); refused unread as "
        "a possible decompression bomb"
    )
    assert reasons["real/broken.png"].startswith("corrupt image: ")


def test_pixel_limit_between_one_and_two_times_is_enforced_too(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(_bomb_png(150, 100))  # 15000 pixels: 1.5x a limit of 10000, where Pillow only warns
    assert check_image(path, max_pixels=10_000) == (
        None,
        "image too large: 150x100 = 15000 pixels, above the limit of 10000 (ETM_MAX_IMAGE_PIXELS); refused unread "
        "as a possible decompression bomb",
    )
