"""The `rendition-worker render` command, run as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import rendition_worker.core.plugins  # noqa: F401  # to open the AVIF outputs
from rendition_worker.cli import main


def make_photo(folder: Path, name: str = "Holiday Photo.jpg") -> Path:
    path = folder / name
    Image.new("RGB", (800, 600), (200, 120, 40)).save(path)
    return path


def test_render_writes_every_rendition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_photo(tmp_path)
    out = tmp_path / "out"
    status = main(["render", str(source), "--out", str(out), "--widths", "200,400"])
    assert status == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(
        f"holiday-photo.width-{width}.format-{fmt}.{ext}"
        for width in (200, 400)
        for fmt, ext in (("avif", "avif"), ("webp", "webp"), ("jpeg", "jpg"))
    )
    with Image.open(out / "holiday-photo.width-400.format-avif.avif") as rendition:
        assert rendition.size == (400, 300)
    assert "JPEG 800x600 -> 6 renditions" in capsys.readouterr().out


def test_bad_file_is_reported_and_the_rest_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_photo(tmp_path)
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    status = main(["render", str(tmp_path), "--out", str(tmp_path / "out"), "--widths", "100"])
    assert status == 1
    assert "notes.jpg: skipped, not-image: not an image" in capsys.readouterr().err
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_bad_spec_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["render", str(make_photo(tmp_path)), "--spec", "width-0"])
    assert exit_info.value.code == 2
    assert "'width-0'" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path: Path) -> None:
    # Beside the interpreter running the tests: the README runs .venv/bin/pytest unactivated.
    executable = shutil.which("rendition-worker", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail("the rendition-worker console script is not installed: pip install -e .")
    source = make_photo(tmp_path)
    result = subprocess.run(
        [executable, "render", str(source), "--out", str(tmp_path / "o"), "--widths", "64"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # SVT-AV1's banner stays quiet
    assert len(list((tmp_path / "o").iterdir())) == 3
