"""One spool directory, one instance: the directory is flock'ed while a Spool is open;
a second instance, or a directory that cannot be made, is a configuration error naming
``spool.dir`` and the path (exit 3 from ``oscc-bridge run``)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.segment import LOCK_FILE
from bridge.spool import Spool
from tests.harness import ROOT, bridge_config, free_port


async def test_second_spool_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=1 << 20):
        with pytest.raises(ConfigError) as err:
            async with Spool(directory, max_bytes=1 << 20):
                pass
        assert err.value.key == "spool.dir"
        assert str(directory) in str(err.value)
    # closed: the lock is gone, the next instance takes the directory
    async with Spool(directory, max_bytes=1 << 20) as spool:
        assert spool.messages == 0


async def test_directory_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    directory = tmp_path / "file" / "spool"
    with pytest.raises(ConfigError) as err:
        async with Spool(directory, max_bytes=1 << 20):
            pass
    assert err.value.key == "spool.dir"
    assert str(directory) in str(err.value)


async def run_bridge(tmp_path: Path, spool_dir: Path) -> tuple[int, list[str]]:
    """``oscc-bridge run`` with `spool_dir`: its exit code and its stderr lines."""
    config = tmp_path / "bridge.toml"
    port = free_port()
    config.write_text(
        bridge_config(
            prefix="t-unused",
            oscc_url="http://127.0.0.1:9",
            port=port,
            spool_dir=spool_dir,
            connectors=[("fb", "FB", "token")],
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), err.decode().splitlines()


async def test_bridge_on_a_locked_spool_exits_3_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running instance holds it
        rc, lines = await run_bridge(tmp_path, directory)
    finally:
        os.close(fd)
    naming = [line for line in lines if str(directory) in line]
    assert rc == 3, lines
    assert len(naming) == 1, lines
    assert "spool.dir" in naming[0]
    assert "in use" in naming[0]


async def test_bridge_on_an_uncreatable_spool_exits_3_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    directory = tmp_path / "file" / "spool"
    rc, lines = await run_bridge(tmp_path, directory)
    naming = [line for line in lines if str(directory) in line]
    assert rc == 3, lines
    assert len(naming) == 1, lines
    assert "spool.dir" in naming[0]
    assert not any("Traceback" in line for line in lines)
