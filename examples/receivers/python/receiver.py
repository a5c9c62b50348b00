"""A Hookline webhook receiver, as an ERP integration would write one.

It verifies every request with the official Standard Webhooks library (PyPI
``standardwebhooks``) and the subscription's secret, refuses a bad signature or a
timestamp outside the library's tolerance (5 minutes) with 401, and de-duplicates on
``webhook-id``: a message it has already processed is answered 200 again and not
processed twice. Processing here is appending one JSON line per accepted message to a
file, which also serves as the de-duplication store across restarts; a real
integration would record the ``webhook-id`` in its own database, in the same
transaction as the booking it makes.

Settings (environment):

- ``WEBHOOK_SECRET``: the subscription's ``whsec_...`` secret (required)
- ``HOST`` / ``PORT``: where to listen (default ``127.0.0.1:9000``)
- ``RECEIVED_FILE``: the file of processed messages (default ``received.jsonl``)

Run: ``python3 receiver.py``; point the subscription at ``http://HOST:PORT/webhooks``.
See docs/receivers.md.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY_BYTES = 1024 * 1024
REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class Store:
    """The processed messages: a JSON line each, and the set of their webhook-ids."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.seen = set()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        self.seen.add(json.loads(line)["webhook_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash: that message is redelivered

    def process_once(self, webhook_id, attempt, event):
        """Processes the message unless it was already; returns whether it was new."""
        with self.lock:
            if webhook_id in self.seen:
                return False
            record = {
                "webhook_id": webhook_id,
                "attempt": attempt,
                "event_id": event.get("id"),
                "event_type": event.get("type"),
                "tenant": event.get("tenant"),
            }
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
            self.seen.add(webhook_id)
            return True


class Handler(BaseHTTPRequestHandler):
    """Verifies, de-duplicates and records one webhook per POST."""

    webhook = None
    store = None

    def do_GET(self):
        if self.path == "/healthz":
            self.answer(200, {"status": "ok"})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        try:
            length = int(self.headers.get("content-length", ""))
        except ValueError:
            return self.answer(411, {"error": "content-length required"})
        if length < 0 or length > MAX_BODY_BYTES:
            return self.answer(413, {"error": "body too large"})
        body = self.rfile.read(length)

        headers = {name: self.headers.get(name) for name in REQUIRED_HEADERS}
        if not all(headers.values()):
            return self.answer(400, {"error": "missing Standard Webhooks headers"})
        try:
            # Verify the raw bytes as received: re-serialised JSON would not match.
            event = self.webhook.verify(body, headers)
        except WebhookVerificationError as err:
            # No matching signature, or a timestamp out of tolerance.
            return self.answer(401, {"error": f"verification failed: {err}"})
        except ValueError:
            # A malformed signature header or body (not base64, not UTF-8, not JSON).
            return self.answer(401, {"error": "verification failed: malformed request"})
        if not isinstance(event, dict):
            return self.answer(400, {"error": "the body is not a JSON object"})

        webhook_id = headers["webhook-id"]
        attempt = self.headers.get("webhook-attempt", "1")
        try:
            fresh = self.store.process_once(webhook_id, attempt, event)
        except OSError as err:
            # Not processed: a 5xx makes Hookline retry the same webhook-id later.
            return self.answer(503, {"error": f"could not record: {err}"})
        self.answer(200, {"status": "accepted" if fresh else "duplicate", "webhook_id": webhook_id})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write("receiver: " + (format % args) + "\n")


def main():
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        sys.exit("receiver: set WEBHOOK_SECRET to the subscription's whsec_... secret")
    Handler.webhook = Webhook(secret)
    Handler.store = Store(os.environ.get("RECEIVED_FILE", "received.jsonl"))
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "9000"))
    server = ThreadingHTTPServer((host, port), Handler)
    sys.stderr.write(f"receiver: listening on http://{host}:{port}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
