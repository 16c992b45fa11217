"""A tiny webhook receiver for hack/demo.sh: verifies each Standard Webhooks signature with the
subscription's signing secret (HMAC-SHA256 by hand, stdlib only) and prints what arrived."""
import base64
import hashlib
import hmac
import http.server
import json
import os
import sys


def expected(secret: str, msg_id: str, ts: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("ce-type") == "dev.hookline.subscription.validation":
            # The ownership handshake: echo the code to prove this endpoint wants the events.
            code = json.loads(body)["validationCode"]
            print("  answered the validation handshake (validationResponse)", flush=True)
            answer = json.dumps({"validationResponse": code}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        secret = open(os.environ["DEMO_SECRET_FILE"]).read().strip()
        sigs = self.headers.get("webhook-signature", "").split(" ")
        want = expected(secret, self.headers["webhook-id"], self.headers["webhook-timestamp"], body)
        ok = "signature OK" if want in sigs else "SIGNATURE MISMATCH"
        kind = self.headers.get("ce-type") or "(structured)"
        print(f"  received {kind:<16} id={self.headers['webhook-id']:<8} {ok}  body={body.decode(errors='replace')}",
              flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


# Port, and the address to listen on (127.0.0.1; 0.0.0.0 in a pod, hack/demo-helm.sh).
address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
http.server.HTTPServer((address, int(sys.argv[1])), Handler).serve_forever()
