"""The documentation cannot drift from the tool: its commands run, and every config key is described."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO

BIN = Path(sys.executable).parent
DOCS = REPO / "docs"
MARK = "<!-- docs-test -->"

# Shrinks a documented command to seconds: each key's value is replaced where the command sets it, added otherwise.
SHRINK = {
    "unet-train": {
        "trainer": "smoke",
        "trainer.max_epochs": "1",
        "trainer.max_time": "60",
        "model.base_channels": "4",
        "model.depth": "2",
        "data.patch_size": "32",
        "data.num_workers": "0",
        "data.samples_per_epoch": "4",
    },
    "unet-plan": {"measure": "false"},
    "unet-eval": {},
    "unet-predict": {"tile_size": "64"},
}
# experiment=quickstart's own data, shrunk
QUICKSTART = {"data.image_size": "64", "data.num_train": "4", "data.num_val": "2", "data.num_test": "2"}


def documented_commands(page: Path) -> list[str]:
    """The commands of the ```bash blocks that follow a ``<!-- docs-test -->`` mark, comments removed."""
    text = page.read_text()
    commands = []
    for block in re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def shrink(command: str, run_folder: Path | None) -> list[str]:
    """The command as argv, with the tiny settings of SHRINK and ``outputs/<date>/<time>`` the newest run."""
    if run_folder is not None:
        command = command.replace("outputs/<date>/<time>", str(run_folder))
    argv = shlex.split(command)
    settings = dict(SHRINK[argv[0]])
    if "experiment=quickstart" in argv:
        settings.update(QUICKSTART)
    if "plan=auto" in argv:
        settings.pop("trainer", None)  # plan=auto keeps the planned trainer; the budget stays small
    out = [str(BIN / argv[0])]
    for arg in argv[1:]:
        key = arg.split("=", 1)[0].lstrip("+")
        out.append(f"{key}={settings.pop(key)}" if key in settings and "=" in arg else arg)
    return out + [f"{k}={v}" for k, v in settings.items()]


def make_folder(root: Path, n: int = 6, size: int = 48) -> None:
    """A folder dataset of bright discs on noise, with binary masks."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "test/images", "test/masks"):
        (root / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n + 2):
        cy, cx = rng.integers(12, size - 12, 2).tolist()
        r = int(rng.integers(5, 10))
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        image = (rng.normal(60, 10, (size, size)) + 120 * mask).clip(0, 255).astype(np.uint8)
        where = "" if i < n else "test/"
        Image.fromarray(image).save(root / f"{where}images" / f"img{i}.png")
        Image.fromarray(mask * 255).save(root / f"{where}masks" / f"img{i}.png")


def newest_run(work: Path) -> Path | None:
    runs = sorted((p.parent.parent for p in (work / "outputs").glob("*/*/checkpoints/best.pt")), key=str)
    return runs[-1] if runs else None


@pytest.mark.slow
@pytest.mark.parametrize("page", ["getting-started.md", "own-data.md"])
def test_documented_commands_run(page, tmp_path):
    commands = documented_commands(DOCS / page)
    assert commands, f"{page} has no {MARK} block"
    make_folder(tmp_path / "my_data")
    make_folder(tmp_path / "new_images_src")
    (tmp_path / "new_images_src" / "images").rename(tmp_path / "new_images")
    for command in commands:
        argv = shrink(command, newest_run(tmp_path))
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        output = result.stdout[-2000:] + result.stderr[-3000:]
        assert result.returncode == 0, f"{command}\n-> {shlex.join(argv)}\n{output}"


def test_config_reference_is_current_and_complete():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for link in re.findall(r"\]\(((?:docs/|CHANGELOG|LICENSE|CITATION)[^)#]*)", readme):
        assert (REPO / link).is_file(), f"README links to a missing file: {link}"
    # the two commands: one sets up and runs the main job, one the tests
    assert "unet-train experiment=quickstart" in readme and "python -m pytest -q -n 2" in readme
    # CI runs the README's test command
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python -m pytest")]
    assert ci == ["python -m pytest -q -n 2"]


def test_user_docs_name_no_development_machine_or_issue():
    for page in [REPO / "README.md", *DOCS.rglob("*.md")]:
        text = page.read_text()
        assert "/work/" not in text, page
        assert not re.search(r"\bissue \d+", text, flags=re.I), page
