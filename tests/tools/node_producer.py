"""A producer that runs as a pod on the test node (tests/integration/node.rs), publishing as its own
ServiceAccount through Hookline's ingest Service, found by the Service environment variables of
$INGEST_SERVICE (there is no cluster DNS on the test node).

It publishes structured-mode events of type $EVENT_TYPE at about $RATE per second, ids
"$PREFIX-<n>", every $FAIL_EVERY-th with data {"fail": true}, all with {"delayMs": $DELAY_MS} (the
receiver answers that much later), until POST /stop (or $COUNT events).
An event is retried until it is accepted (202): a Hookline pod being deleted or not yet ready
refuses or drops the connection, as in production. It serves
  GET /status -> {"accepted": [ids answered 202], "failing": [those with fail], "retries": n,
                  "done": bool, "refusals": {status: count}}
"""

import http.client
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
prefix = os.environ["INGEST_SERVICE"].upper().replace("-", "_")
host = os.environ[f"{prefix}_SERVICE_HOST"]
port = int(os.environ[f"{prefix}_SERVICE_PORT"])
namespace = os.environ["NAMESPACE"]
rate = float(os.environ.get("RATE", "50"))
count = int(os.environ.get("COUNT", "0")) or None
fail_every = int(os.environ.get("FAIL_EVERY", "0"))
event_type = os.environ.get("EVENT_TYPE", "node.test.created")
id_prefix = os.environ.get("PREFIX", "ev")
delay_ms = int(os.environ.get("DELAY_MS", "0"))

lock = threading.Lock()
state = {"accepted": [], "failing": [], "retries": 0, "done": False, "refusals": {}}
stop = threading.Event()


def publish(conn, event):
    with open(TOKEN_FILE) as f:
        token = f.read().strip()
    conn.request(
        "POST",
        f"/v1/namespaces/{namespace}/events",
        body=json.dumps(event),
        headers={"content-type": "application/cloudevents+json", "authorization": f"Bearer {token}"},
    )
    resp = conn.getresponse()
    resp.read()
    return resp.status


def run():
    conn = None
    n = 0
    start = time.monotonic()
    while not stop.is_set() and (count is None or n < count):
        failing = fail_every > 0 and n % fail_every == fail_every - 1
        event = {"specversion": "1.0", "id": f"{id_prefix}-{n}", "source": "/node-producer",
                 "type": event_type, "datacontenttype": "application/json",
                 "data": {"n": n, "fail": failing, "delayMs": delay_ms}}
        while True:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=10)
                status = publish(conn, event)
            except (OSError, http.client.HTTPException):
                status = 0
                conn = None
            if status == 202:
                break
            with lock:
                state["retries"] += 1
                state["refusals"][str(status)] = state["refusals"].get(str(status), 0) + 1
            time.sleep(0.2)
        with lock:
            state["accepted"].append(event["id"])
            if failing:
                state["failing"].append(event["id"])
        n += 1
        pause = start + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    with lock:
        state["done"] = True


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        with lock:
            body = json.dumps(state).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        stop.set()
        self.send_response(204)
        self.end_headers()


threading.Thread(target=run, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 8001), Handler).serve_forever()
