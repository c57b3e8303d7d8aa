"""Every test file under tests/ is collected by the bare command CI runs (``python -m pytest``).

pytest's default ``norecursedirs`` holds ``dist`` and ``build`` (and anything starting with a dot): a folder named
``tests/dist`` was silently never run by CI while the README cited its tests. This guard compares what a bare
collection finds with the test files on disk, so no folder can fall out of CI unnoticed again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def uncollected(root: Path) -> list[str]:
    """Test files (``test_*.py`` under ``root/tests``) that ``python -m pytest --collect-only`` in ``root`` skips."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=root, capture_output=True, text=True, timeout=600)
    collected = {line.split("::")[0] for line in res.stdout.splitlines() if "::" in line}
    on_disk = {p.relative_to(root).as_posix() for p in (root / "tests").rglob("test_*.py")
               if "__pycache__" not in p.parts}
    return sorted(on_disk - collected)


def test_the_bare_command_collects_every_test_file():
    assert uncollected(ROOT) == []


def test_the_guard_finds_a_folder_pytest_skips(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in ("ok", "dist"):  # 'dist' is in pytest's default norecursedirs
        (tmp_path / "tests" / folder).mkdir(parents=True)
        (tmp_path / "tests" / folder / f"test_{folder}.py").write_text("def test_one():\n    assert True\n")
    assert uncollected(tmp_path) == ["tests/dist/test_dist.py"]
