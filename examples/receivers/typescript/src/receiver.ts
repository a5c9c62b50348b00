// A Hookline webhook receiver, as an ERP integration would write one.
//
// It verifies every request with the official Standard Webhooks library (npm
// `standardwebhooks`) and the subscription's secret, refuses a bad signature or a
// timestamp outside the library's tolerance (5 minutes) with 401, and de-duplicates on
// `webhook-id`: a message it has already processed is answered 200 again and not
// processed twice. Processing here is appending one JSON line per accepted message to a
// file, which also serves as the de-duplication store across restarts; a real
// integration would record the `webhook-id` in its own database, in the same
// transaction as the booking it makes.
//
// Settings (environment):
//   WEBHOOK_SECRET  the subscription's whsec_... secret (required)
//   HOST / PORT     where to listen (default 127.0.0.1:9000)
//   RECEIVED_FILE   the file of processed messages (default received.jsonl)
//
// Build and run: `npm ci && npm run build && npm start`; point the subscription at
// http://HOST:PORT/webhooks. See docs/receivers.md.

import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const MAX_BODY_BYTES = 1024 * 1024;

/** What is kept of one processed message. */
interface Processed {
  webhook_id: string;
  attempt: string;
  event_id: unknown;
  event_type: unknown;
  tenant: unknown;
}

/** The processed messages: a JSON line each, and the set of their webhook-ids. */
class Store {
  private readonly seen = new Set<string>();

  constructor(private readonly path: string) {
    if (!existsSync(path)) return;
    for (const line of readFileSync(path, "utf8").split("\n")) {
      try {
        const id = (JSON.parse(line) as Partial<Processed>).webhook_id;
        if (typeof id === "string") this.seen.add(id);
      } catch {
        // An empty or cut-short line: that message is redelivered and processed then.
      }
    }
  }

  /** Processes the message unless it was already; returns whether it was new. */
  processOnce(record: Processed): boolean {
    // Node runs this handler to completion before the next request: no lock needed.
    if (this.seen.has(record.webhook_id)) return false;
    appendFileSync(this.path, `${JSON.stringify(record)}\n`);
    this.seen.add(record.webhook_id);
    return true;
  }
}

function answer(res: ServerResponse, status: number, body: object): void {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(data),
  });
  res.end(data);
}

/** The raw body, exactly as received (the signature covers these bytes). */
async function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

async function handle(
  webhook: Webhook,
  store: Store,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  if (req.method === "GET" && req.url === "/healthz") return answer(res, 200, { status: "ok" });
  if (req.method !== "POST") return answer(res, 405, { error: "POST only" });

  const body = await readBody(req);
  if (body === undefined) return answer(res, 413, { error: "body too large" });
  const id = header(req, "webhook-id");
  const timestamp = header(req, "webhook-timestamp");
  const signature = header(req, "webhook-signature");
  if (!id || !timestamp || !signature) {
    return answer(res, 400, { error: "missing Standard Webhooks headers" });
  }

  let event: unknown;
  try {
    event = webhook.verify(body, {
      "webhook-id": id,
      "webhook-timestamp": timestamp,
      "webhook-signature": signature,
    });
  } catch (err) {
    // A bad or missing signature, a timestamp out of tolerance, a malformed header.
    if (err instanceof WebhookVerificationError || err instanceof SyntaxError) {
      return answer(res, 401, { error: `verification failed: ${err.message}` });
    }
    throw err;
  }
  if (typeof event !== "object" || event === null || Array.isArray(event)) {
    return answer(res, 400, { error: "the body is not a JSON object" });
  }

  const fields = event as Record<string, unknown>;
  let fresh: boolean;
  try {
    fresh = store.processOnce({
      webhook_id: id,
      attempt: header(req, "webhook-attempt") ?? "1",
      event_id: fields.id,
      event_type: fields.type,
      tenant: fields.tenant,
    });
  } catch (err) {
    // Not processed: a 5xx makes Hookline retry the same webhook-id later.
    return answer(res, 503, { error: `could not record: ${String(err)}` });
  }
  answer(res, 200, { status: fresh ? "accepted" : "duplicate", webhook_id: id });
}

function main(): void {
  const secret = process.env.WEBHOOK_SECRET;
  if (!secret) {
    console.error("receiver: set WEBHOOK_SECRET to the subscription's whsec_... secret");
    process.exit(1);
  }
  const webhook = new Webhook(secret);
  const store = new Store(process.env.RECEIVED_FILE ?? "received.jsonl");
  const host = process.env.HOST ?? "127.0.0.1";
  const port = Number(process.env.PORT ?? "9000");

  const server = createServer((req, res) => {
    handle(webhook, store, req, res).catch((err: unknown) => {
      console.error("receiver: request failed:", err);
      if (!res.headersSent) answer(res, 500, { error: "internal error" });
    });
  });
  server.listen(port, host, () => {
    console.error(`receiver: listening on http://${host}:${port}`);
  });
}

main();
