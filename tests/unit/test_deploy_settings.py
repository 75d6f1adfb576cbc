"""Production settings (issue #10): ``manage.py check --deploy`` is clean when DEBUG is off
and the operator sets the documented production variables (README, docs/security.md);
without them the embedded default keeps serving plain http://127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.gateway import REPO, base_env

PRODUCTION = {"DJANGO_HTTPS": "on", "DJANGO_SECURE_HSTS_SECONDS": "31536000"}


def _manage(tmp_path: Path, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(tmp_path / "var", "deploy", extra)
    # A production-strength secret (check_secret_key wants 50+ characters, 5+ distinct).
    env["DJANGO_SECRET_KEY"] = "k" * 10 + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )


def test_check_deploy_is_clean_with_the_production_variables(tmp_path: Path) -> None:
    # Every check, not only the security tag: drf-spectacular's schema warnings are gone too.
    result = _manage(tmp_path, PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_without_them_the_embedded_default_stays_plain_http(tmp_path: Path) -> None:
    result = _manage(tmp_path, {}, "check", "--deploy", "--tag", "security")
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr
    assert _requests(tmp_path, {})["admin"] == 200  # no redirect to https


SCRIPT = """
import json
from django.test import Client
def get(path, **extra):
    response = Client(HTTP_HOST="127.0.0.1").get(path, **extra)
    return response.status_code, response.get("Location", ""), response.cookies
status, location, _ = get("/admin/login/")
proxied = Client(HTTP_HOST="127.0.0.1").get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "admin": status, "location": location,
    "proxied": proxied.status_code,
    "csrf_secure": bool(proxied.cookies["csrftoken"]["secure"]),
    "hsts": proxied.get("Strict-Transport-Security", ""),
    "metrics": get("/metrics")[0],
}))
"""


def _requests(tmp_path: Path, extra: dict[str, str]) -> dict[str, object]:
    result = _manage(tmp_path, extra, "shell", "-c", SCRIPT)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_https_redirects_except_the_ops_endpoints(tmp_path: Path) -> None:
    out = _requests(tmp_path, PRODUCTION)
    # Plain HTTP to the admin goes to HTTPS; through the TLS proxy it is served, with a
    # secure CSRF cookie and HSTS.
    assert out["admin"] == 301
    assert str(out["location"]).startswith("https://127.0.0.1/admin/login/")
    assert out["proxied"] == 200
    assert out["csrf_secure"] is True
    assert out["hsts"] == "max-age=31536000; includeSubDomains"
    # Probes and scrapers on the internal port speak plain HTTP: not redirected.
    assert out["metrics"] == 200
