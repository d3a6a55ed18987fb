"""The package carries what `lanner demo` reads: built as a wheel, installed, zipped.

The demo's alerts and catalogs are package data (`broker.data`), found through
importlib.resources, so `lanner demo` works from an installed package with no repository around.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from broker.data import CATALOGS, ztf_alerts
from broker.streaming.replay import iter_alert_files
from tests.support.data import BUNDLED_DATA, REPO_ROOT

#: What a wheel is built from (the sdist's Python part).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "broker", "consumers", "api")


def _shipped() -> set[str]:
    """Every file under broker/data, as wheel member names."""
    return {
        path.relative_to(REPO_ROOT).as_posix()
        for path in BUNDLED_DATA.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def _copy_sources(target: Path) -> Path:
    target.mkdir()
    for name in SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources, offline (no build isolation, no index)."""
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_sources(root / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--wheel-dir", str(root / "dist"),
         str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = (root / "dist").glob("lanner-*.whl")
    return built


def test_the_loader_finds_the_data_through_importlib_resources() -> None:
    assert ztf_alerts() == files("broker.data") / "ztf"
    alerts = list(iter_alert_files(ztf_alerts()))
    assert len(alerts) == 53
    assert {key for _, _, key in alerts} >= {b"ZTF18abmmoot", b"ZTF20aabaesq"}
    assert [catalog.name for catalog in CATALOGS] == ["hipparcos", "openngc"]
    for catalog in CATALOGS:
        assert catalog.resource().is_file()
        with catalog.path() as path:
            assert path.stat().st_size == len(catalog.resource().read_bytes())
    for notice in ("ztf/README.md", "catalogs/README.md"):
        assert "Licence" in (files("broker.data") / notice).read_text(encoding="utf-8")


def test_the_wheel_carries_the_demo_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    shipped = _shipped()
    assert len([name for name in shipped if name.endswith(".avro")]) == 53
    assert {"broker/data/catalogs/hipparcos2.parquet", "broker/data/catalogs/openngc.csv",
            "broker/data/ztf/README.md", "broker/data/catalogs/README.md"} <= shipped
    assert shipped <= members, sorted(shipped - members)


def test_the_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path, and nothing runs from the repository.
    env = {**os.environ, "PYTHONPATH": str(site), "LANNER_STATE_DIR": str(tmp_path / "state")}
    where = subprocess.run(
        [sys.executable, "-c", "import broker.data; print(broker.data.__file__)"],
        capture_output=True, text=True, check=True, cwd=elsewhere, env=env, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(site)
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "demo", "--count", "20", "--no-serve"],
        capture_output=True, text=True, check=False, cwd=elsewhere, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "archived 76 alerts (23 simulated Rubin 11.1, 53 real ZTF)" in result.stdout
    assert "(context: variable_star)" in result.stdout
    assert "reference catalogs: hipparcos, openngc" in result.stdout


def test_the_loader_reads_a_zipped_package(tmp_path: Path) -> None:
    """No path is built from ``__file__``: the data is found inside a zip archive too."""
    archive = tmp_path / "lanner.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in (REPO_ROOT / "broker").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                out.write(path, path.relative_to(REPO_ROOT).as_posix())
    code = (
        "import broker.data, broker.streaming.replay as r\n"
        "print(broker.data.__file__)\n"
        "print(sum(1 for _ in r.iter_alert_files(broker.data.ztf_alerts())))\n"
        "for c in broker.data.CATALOGS:\n"
        "    with c.path() as p:\n"
        "        print(c.name, p.stat().st_size)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(archive)}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(archive))
    assert lines[1] == "53"
    sizes = {c.name: (BUNDLED_DATA / "catalogs" / c.filename).stat().st_size for c in CATALOGS}
    assert lines[2:] == [f"{name} {size}" for name, size in sizes.items()]
