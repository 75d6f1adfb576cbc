"""gateway.js's own unit tests (``clients/js/test/unit.test.js``: a fake WebSocket and an
injected clock), run under ``node --test``."""

from __future__ import annotations

import subprocess

from tests.support.client_libs import JS_DIR, node_binary


def test_js_unit():
    result = subprocess.run([node_binary(), "--test", "test/unit.test.js"], cwd=JS_DIR,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
