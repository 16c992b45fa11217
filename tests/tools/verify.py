"""Check Hookline's wire format with the reference libraries a subscriber would use.

Reads JSON from stdin: {"secrets": [...], "requests": [{"headers": {...}, "body_b64": "..."}]}.
For every request: each secret must verify the Standard Webhooks signature (standardwebhooks),
and the CloudEvents SDK must parse the request (binary or structured). Prints one JSON line per
request with the parsed event, and exits non-zero on the first failure.
"""
import base64
import json
import sys

from cloudevents.v1.http import from_http
from standardwebhooks.webhooks import Webhook


def main() -> int:
    spec = json.load(sys.stdin)
    for req in spec["requests"]:
        headers = req["headers"]
        body = base64.b64decode(req["body_b64"])
        sigs = headers["webhook-signature"].split(" ")
        for secret in spec["secrets"]:
            # Verify with this secret alone: the header carries one signature per secret.
            Webhook(secret).verify(body, headers)
        event = from_http(headers, body)
        print(json.dumps({
            "id": event["id"], "source": event["source"], "type": event["type"],
            "signatures": len(sigs),
            "data": event.data if not isinstance(event.data, bytes) else base64.b64encode(event.data).decode(),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
