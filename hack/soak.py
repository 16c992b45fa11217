"""Soak traffic for hack/soak.sh: a receiver that fails at random and a steady publisher.

receiver PORT FAIL_RATIO     answers the handshake; otherwise 503 with probability FAIL_RATIO,
                             sometimes slowly, else 200
publish URL RATE SECONDS     binary-mode events at RATE/s, plus a batch of 20 every second
"""
import http.server
import json
import random
import socketserver
import sys
import threading
import time
import urllib.request


class Receiver(http.server.BaseHTTPRequestHandler):
    fail_ratio = 0.2

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("ce-type") == "dev.hookline.subscription.validation":
            answer = json.dumps({"validationResponse": json.loads(body)["validationCode"]}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        roll = random.random()
        if roll < self.fail_ratio:
            self.send_response(503)
        elif roll < self.fail_ratio + 0.05:
            time.sleep(0.5)
            self.send_response(200)
        else:
            self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def receiver(port, fail_ratio):
    Receiver.fail_ratio = fail_ratio
    Server(("127.0.0.1", port), Receiver).serve_forever()


def post(url, data, headers):
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except Exception:
        return 0


def publish(url, rate, seconds):
    end = time.time() + seconds
    n = 0
    errors = 0

    def batch_loop():
        nonlocal errors
        k = 0
        while time.time() < end:
            events = [{"specversion": "1.0", "id": f"b{k}-{i}", "source": "/soak", "type": "soak.batch",
                       "data": {"k": k, "i": i}} for i in range(20)]
            if post(url, json.dumps(events).encode(), {"content-type": "application/cloudevents-batch+json"}) != 202:
                errors += 1
            k += 1
            time.sleep(1)

    threading.Thread(target=batch_loop, daemon=True).start()
    while time.time() < end:
        start = time.time()
        headers = {"ce-specversion": "1.0", "ce-id": f"s{n}", "ce-source": "/soak", "ce-type": "soak.single",
                   "content-type": "application/json"}
        if post(url, json.dumps({"n": n}).encode(), headers) != 202:
            errors += 1
        n += 1
        time.sleep(max(0.0, 1.0 / rate - (time.time() - start)))
    print(json.dumps({"published_single": n, "publish_errors": errors}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "receiver":
        receiver(int(sys.argv[2]), float(sys.argv[3]))
    else:
        publish(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
