#!/usr/bin/env python3
"""A local webhook receiver: prints every JSON POST it gets.

    python3 scripts/webhook_sink.py [PORT] [--secret whsec_...]    # 127.0.0.1:PORT (9099)

Two kinds of calls, told apart by their headers:
- the gateway's webhooks (docs/webhooks.md): the event's type, id and data, and with
  ``--secret`` whether its ``Gateway-Signature`` verifies;
- ``runalerts``' notices (Alertmanager's shape): status, alert and summary.
Standard library only, so that it runs anywhere without the gateway's environment.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = ""


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    """The check docs/webhooks.md shows a receiver."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, sent = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sent)


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            notice = json.loads(body)
        except ValueError:
            print(f"(not JSON) {body[:200]!r}", flush=True)
            notice = None
        signature = self.headers.get("Gateway-Signature")
        if signature is not None and isinstance(notice, dict):
            checked = ""
            if SECRET:
                checked = " signature ok" if verify(SECRET, body, signature) else \
                    " SIGNATURE DOES NOT VERIFY"
            print(f"{notice.get('type')} {notice.get('id')}{checked}: "
                  f"{json.dumps(notice.get('data'))}", flush=True)
        elif isinstance(notice, dict):
            alert = (notice.get("alerts") or [{}])[0]
            labels = alert.get("labels", {})
            print(f"{notice.get('status', '?').upper():9} {labels.get('alertname')}"
                  f" node={labels.get('node')}: {alert.get('annotations', {}).get('summary')}",
                  flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, default=9099)
    parser.add_argument("--secret", default="", help="a webhook endpoint's signing secret")
    args = parser.parse_args()
    SECRET = args.secret
    print(f"webhook sink on http://127.0.0.1:{args.port}/", flush=True)
    HTTPServer(("127.0.0.1", args.port), Sink).serve_forever()
