"""A webhook receiver that runs as a pod on the test node (tests/integration/node.rs).

It answers Hookline's ownership handshake, checks every delivery's Standard Webhooks signature
with the reference `standardwebhooks` library (secret from $WEBHOOK_SECRET), and keeps what it saw:
  GET /received -> {"ids": [verified event ids, in arrival order], "completed": [ids whose answer
                   was written in full], "badSignatures": n, "maxInFlight": n, "inFlight": n}
An event whose JSON data holds {"fail": true} is answered 400 (dead-lettered at once); one with
{"delayMs": n} is answered after n milliseconds (an attempt in flight, for shutdown tests).
"""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

VALIDATION = "dev.hookline.subscription.validation"
webhook = Webhook(os.environ["WEBHOOK_SECRET"])
lock = threading.Lock()
seen = {"ids": [], "completed": [], "badSignatures": 0, "maxInFlight": 0, "inFlight": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        with lock:
            body = json.dumps(seen).encode()
        self.answer(200, body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if headers.get("ce-type") == VALIDATION:
            code = json.loads(body)["validationCode"]
            self.answer(200, json.dumps({"validationResponse": code}).encode())
            return
        try:
            webhook.verify(body, headers)
        except Exception:  # noqa: BLE001 - any failure to verify is a bad signature
            with lock:
                seen["badSignatures"] += 1
            self.answer(401)
            return
        event_id = headers["webhook-id"]
        data = json.loads(body) if body else {}
        with lock:
            seen["ids"].append(event_id)
            seen["inFlight"] += 1
            seen["maxInFlight"] = max(seen["maxInFlight"], seen["inFlight"])
        try:
            delay = data.get("delayMs", 0) if isinstance(data, dict) else 0
            if delay:
                time.sleep(delay / 1000)
            self.answer(400 if isinstance(data, dict) and data.get("fail") else 200)
            with lock:
                seen["completed"].append(event_id)
        finally:
            with lock:
                seen["inFlight"] -= 1


ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
