"""Operator commands as an operator runs them: real subprocesses, from another directory."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.access.keys import new_api_key
from serve_app.jobs.records import JobRecord
from serve_app.jobs.sqlite_store import SqliteStore
from vocabulary import JobStatus

REPO = Path(__file__).resolve().parents[1]


def _retroiva(*args: str, cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RETROIVA_")}
    environ.update(XDG_DATA_HOME=str(home), PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _seed(path: Path) -> tuple[str, str]:
    async def seed() -> tuple[str, str]:
        store = SqliteStore(path)
        await store.init()
        _, key = new_api_key("ops", 60)
        await store.add_key(key)
        now = time.time()
        job, _ = await store.insert_job(
            JobRecord(
                id="job_ops1",
                key_id=key.id,
                status=JobStatus.QUEUED,
                input_url="https://example.com/v.mp4",
                preset="general",
                upscale_factor=2,
                created_at=now,
                created_seq=time.time_ns(),
            ),
            now,
        )
        await store.close()
        return key.id, job.id

    return asyncio.run(seed())


def test_operator_commands_find_the_services_store_from_any_directory(tmp_path: Path):
    home, elsewhere = tmp_path / "share", tmp_path / "elsewhere"
    elsewhere.mkdir()
    store_path = home / "retroiva" / "retroiva.sqlite3"
    # No store yet: an error that says where it looked, and nothing created.
    for args in (["jobs", "list"], ["keys", "list"]):
        result = _retroiva(*args, cwd=elsewhere, home=home)
        assert result.returncode == 1, result
        assert f"no store at {store_path}" in result.stderr
    assert not store_path.exists() and not (elsewhere / "data").exists()

    key_id, job_id = _seed(store_path)  # where `retroiva serve` keeps it by default
    listed = _retroiva("jobs", "list", cwd=elsewhere, home=home)
    assert listed.returncode == 0, listed
    assert f"store: SQLite {store_path}" in listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "PROGRESS", "PRESET"]
    assert row.startswith(job_id) and "queued" in row and key_id in row

    keys = _retroiva("keys", "list", cwd=elsewhere, home=home)
    assert keys.returncode == 0, keys
    assert keys.stdout.splitlines()[0].split() == [
        "ID",
        "PREFIX",
        "NAME",
        "RATE",
        "LIMITS",
        "STATE",
    ]
    assert key_id in keys.stdout.splitlines()[1]

    shown = _retroiva("jobs", "show", job_id, cwd=elsewhere, home=home)
    assert shown.returncode == 0, shown
    created = re.search(r"created_at: (\S+)", shown.stdout).group(1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", created), created

    # An explicit RETROIVA_DATA_DIR still wins.
    other = _retroiva(
        "jobs", "list", cwd=elsewhere, home=home, RETROIVA_DATA_DIR=str(tmp_path / "other")
    )
    assert other.returncode == 1 and "no store at" in other.stderr


def test_models_list_says_which_preset_uses_which_model(tmp_path: Path):
    result = _retroiva("models", "list", cwd=tmp_path, home=tmp_path)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    table = lines[1 : lines.index(next(x for x in lines if x.startswith("presets:")))]
    rows = {line.split()[0]: line for line in table}
    assert "presets" in lines[0]
    assert re.search(r"\bgeneral,cinematic,social\b", rows["span-x2"])
    assert not re.search(r"\b(general|cinematic|social|archive)\b", rows["clearreality-x4"])
    assert re.search(
        r"\bgeneral,cinematic,social,archive\b",
        rows["rife-4.6"] if "rife-4.6" in rows else next(v for k, v in rows.items() if "rife" in k),
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.mp4", "out.mp4"], "does not exist"),
        (["{video}", "out.mp4", "--preset", "foo"], "preset must be one of"),
        (["{video}", "out.avi"], "output must end in one of"),
        (["{video}", "out.mp4", "--engine", "quantum"], "neural, classical"),
    ],
)
def test_enhance_checks_its_arguments_before_starting_ray(
    tmp_path: Path, args: list[str], message: str
):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"not checked: the arguments fail first")
    result = _retroiva(
        "enhance", *[a.format(video=video) for a in args], cwd=tmp_path, home=tmp_path
    )
    assert result.returncode == 2, result
    assert message in re.sub(r"[\s│╭╮╰╯─]+", " ", result.stderr)
    assert "ray" not in result.stderr.lower() and not (tmp_path / "out.mp4").exists()
