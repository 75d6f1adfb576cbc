"""The embedded default's files are private (issue #10): the data directory 0700, the SQLite
database (pushes' payloads, session keys, key hashes), its WAL/SHM/journal files and the
generated secrets 0600, whatever the umask of whoever started the node."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.gateway import REPO, base_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run(data_dir: Path, *args: str, secrets: bool = False) -> None:
    env = base_env(data_dir, "files")
    if not secrets:
        # Generated into the data dir, as on a first start without configuration.
        env.pop("GATEWAY_JWT_SECRET")
        env.pop("DJANGO_SECRET_KEY")
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120, check=False,
        # The loosest umask an operator's shell could have.
        preexec_fn=lambda: os.umask(0),
    )
    assert result.returncode == 0, result.stderr


def test_fresh_data_dir_is_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "var"
    # migrate opens the database in WAL mode and writes it; the shell command below keeps a
    # connection open while it looks, so the -wal and -shm files exist at that moment.
    _run(data_dir, "migrate", "--no-input", "-v", "0")
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "secrets.json") == 0o600
    assert _mode(data_dir / "gateway.sqlite3") == 0o600
    probe = tmp_path / "modes.txt"
    script = (
        "import os, stat\n"
        "from django.db import connection\n"
        "from django.contrib.auth.models import User\n"
        "User.objects.create_user('probe')\n"
        f"d = {str(data_dir)!r}\n"
        "lines = []\n"
        "for name in sorted(os.listdir(d)):\n"
        "    if name.startswith('gateway.sqlite3'):\n"
        "        lines.append(f'{name} {stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode):o}')\n"
        f"open({str(probe)!r}, 'w').write(chr(10).join(lines))\n"
    )
    _run(data_dir, "shell", "-c", script)
    modes = dict(line.split() for line in probe.read_text().splitlines())
    assert {"gateway.sqlite3", "gateway.sqlite3-wal", "gateway.sqlite3-shm"} <= set(modes)
    assert set(modes.values()) == {"600"}, modes


def test_existing_files_are_made_private(tmp_path: Path) -> None:
    """A data dir made by an earlier release (0755, 0644) is tightened on the next start."""
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    database = data_dir / "gateway.sqlite3"
    database.touch()
    os.chmod(database, 0o644)
    _run(data_dir, "migrate", "--no-input", "-v", "0", secrets=True)
    assert _mode(data_dir) == 0o700
    assert _mode(database) == 0o600

