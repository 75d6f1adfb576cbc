#!/usr/bin/env python3
"""A webhook receiver for trying alerts locally: prints every JSON POST it gets.

    python3 scripts/webhook_sink.py [PORT]      # listens on 127.0.0.1:PORT (9099)
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            notice = json.loads(body)
            alert = (notice.get("alerts") or [{}])[0]
            labels = alert.get("labels", {})
            print(f"{notice.get('status', '?').upper():9} {labels.get('alertname')}"
                  f" node={labels.get('node')}: {alert.get('annotations', {}).get('summary')}",
                  flush=True)
        except ValueError:
            print(f"(not JSON) {body[:200]!r}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9099
    print(f"webhook sink on http://127.0.0.1:{port}/", flush=True)
    HTTPServer(("127.0.0.1", port), Sink).serve_forever()
