#!/usr/bin/env node
// A Vigil results subscriber in plain Node.js (>= 18), no npm packages: RESP2 over node:net.
// Prints one JSON line per result entry of docs/results-schema.md; see README.md in this directory.
import net from "node:net";
import os from "node:os";
import { parseArgs } from "node:util";

const KNOWN_VERSION = "1";
const BLOCK_MS = 2000;
const NUMBERS = ["seq", "score", "captured_at", "produced_at", "inferred_at"];
const USAGE = `usage: node subscriber.mjs --source SRC [--url redis://[user:pass@]host:port/db] [--namespace NS]
                           [--group NAME] [--consumer NAME] [--count N] [--until-eos]
Prints one JSON line per result; --until-eos exits 0 once the source ended and every result was printed
(by this consumer or, sharing --group, by the others).`;

class ReplyError extends Error {}

// One RESP2 reply from buf at pos: [value, next pos], or null when buf does not hold all of it yet.
function parse(buf, pos) {
  const eol = buf.indexOf("\r\n", pos);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[pos]);
  const line = buf.toString("utf8", pos + 1, eol);
  const next = eol + 2;
  if (type === "+") return [line, next];
  if (type === "-") return [new ReplyError(line), next];
  if (type === ":") return [Number(line), next];
  const n = Number(line);
  if (type === "$") {
    if (n < 0) return [null, next];
    return buf.length < next + n + 2 ? null : [buf.toString("utf8", next, next + n), next + n + 2];
  }
  if (type === "*") {
    if (n < 0) return [null, next];
    const items = [];
    let at = next;
    for (let i = 0; i < n; i++) {
      const item = parse(buf, at);
      if (item === null) return null;
      items.push(item[0]);
      at = item[1];
    }
    return [items, at];
  }
  throw new Error(`unexpected RESP type byte ${JSON.stringify(type)}`);
}

// A connection that sends commands and settles their promises in reply order (Redis answers in order).
class Redis {
  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.waiting = [];
    socket.on("data", (chunk) => this.receive(chunk));
    socket.on("error", (err) => this.fail(err));
    socket.on("close", () => this.fail(new Error("connection closed by the server")));
  }

  static open(host, port) {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      socket.once("connect", () => { socket.removeListener("error", reject); resolve(new Redis(socket)); });
      socket.once("error", reject);
    });
  }

  call(...args) {
    const parts = args.map((a) => { const s = String(a); return `$${Buffer.byteLength(s)}\r\n${s}\r\n`; });
    this.socket.write(`*${args.length}\r\n${parts.join("")}`);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  receive(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    try {
      let reply;
      while (this.waiting.length && (reply = parse(this.buf, 0)) !== null) {
        this.buf = this.buf.subarray(reply[1]);
        const { resolve, reject } = this.waiting.shift();
        reply[0] instanceof ReplyError ? reject(reply[0]) : resolve(reply[0]);
      }
    } catch (err) {
      this.socket.destroy(err);  // not a RESP server: the "error" handler fails every waiting command
    }
  }

  fail(err) {
    for (const { reject } of this.waiting.splice(0)) reject(err);
  }

  close() { this.socket.end(); }
}

function redact(url) {
  return url.replace(/\/\/[^/@]*@/, "//***@");
}

function parseUrl(text) {
  let url;
  const bad = new Error(`invalid URL ${redact(text)}: use redis://[user:password@]host:port/db (db a number)`);
  try { url = new URL(text); } catch { throw bad; }
  const db = url.pathname.replace(/^\//, "") || "0";
  if (url.protocol !== "redis:" || !/^\d+$/.test(db)) throw bad;
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(url.port || 6379), db,
           user: decodeURIComponent(url.username), password: decodeURIComponent(url.password) };
}

// The typed JSON object of one entry's flat string fields (topk as [[label, p], ...], as `vigil results export`).
function toResult(fields) {
  const r = {};
  for (let i = 0; i < fields.length; i += 2) r[fields[i]] = fields[i + 1];
  for (const k of NUMBERS) if (k in r) r[k] = Number(r[k]);
  r.topk = (r.topk || "").split(",").filter(Boolean).map((item) => {
    const colon = item.lastIndexOf(":");
    return [item.slice(0, colon), Number(item.slice(colon + 1))];
  });
  return r;
}

// Frames of the source that will get no (more) result entry: written, dead-lettered, stale, or trimmed unread.
// The workers' publish script appends a result and counts it in one atomic step, so once these reach the
// frame count every result is on the stream.
async function accounted(redis, metaKey) {
  const counts = await redis.call("HMGET", metaKey, "processed", "dead", "dropped_stale", "dropped_trimmed");
  return counts.reduce((sum, n) => sum + Number(n || 0), 0);
}

// The frame count once the producer ended the source (its meta hash holds eos and total), else null. Read
// there when this consumer did not see the end-of-stream entry: another consumer of a shared group, or an
// earlier run with the same group, read and acked it.
async function ended(redis, metaKey) {
  const [eos, total] = await redis.call("HMGET", metaKey, "eos", "total");
  return eos === "1" && total !== null ? Number(total) : null;
}

// Print one entry (a result of a known version) and say whether it was the end-of-stream marker.
function show(entryId, result) {
  if (result === null) return false;  // deleted (trimmed) while pending: nothing to show
  if (result.v !== KNOWN_VERSION) {
    process.stderr.write(`skipped entry ${entryId}: schema version ${result.v}, this reader knows ${KNOWN_VERSION}`
                         + "\n");
    return false;
  }
  if (result.type === "result") process.stdout.write(JSON.stringify(result) + "\n");
  else process.stderr.write(`end of stream: source ${result.source}, ${result.seq} frames\n`);
  return result.type === "eos";
}

async function subscribe(redis, keys, opts) {
  await redis.call("XGROUP", "CREATE", keys.results, opts.group, "0", "MKSTREAM").catch((err) => {
    if (!String(err.message).startsWith("BUSYGROUP")) throw err;
  });
  let id = "0";  // first our own pending entries (a previous run that died before XACK), then new ones: ">"
  let frames = null;  // the frame count, once the eos entry was read
  let draining = false;  // every result is on the stream: read what is left without blocking, then stop
  for (;;) {
    const block = draining ? [] : ["BLOCK", BLOCK_MS];
    const reply = await redis.call("XREADGROUP", "GROUP", opts.group, opts.consumer, "COUNT", opts.count,
                                   ...block, "STREAMS", keys.results, id);
    const entries = reply === null ? [] : reply[0][1];
    if (id === "0" && entries.length === 0) id = ">";
    else if (draining && entries.length === 0) return;
    else if (entries.length === 0 && opts.untilEos && frames === null) frames = await ended(redis, keys.meta);
    for (const [entryId, fields] of entries) {
      const result = fields === null ? null : toResult(fields);
      if (show(entryId, result)) frames = result.seq;
      await redis.call("XACK", keys.results, opts.group, entryId);  // after printing: at-least-once
    }
    // The eos entry comes from the worker that handled the producer's last message; other workers may still be
    // writing results of earlier frames, so it is not the last entry of the stream.
    if (opts.untilEos && frames !== null && !draining) draining = await accounted(redis, keys.meta) >= frames;
  }
}

async function login(redis, url, shown) {
  try {
    if (url.password) await redis.call("AUTH", ...(url.user ? [url.user] : []), url.password);
    if (url.db !== "0") await redis.call("SELECT", url.db);
  } catch (err) {
    throw new Error(`${shown}: ${err.message}. Check the user, password and db in the URL.`);
  }
}

async function main() {
  const { values: a } = parseArgs({ options: {
    url: { type: "string", default: process.env.REDIS_URL || "redis://127.0.0.1:6379/0" },
    namespace: { type: "string", default: "vigil" }, source: { type: "string" },
    group: { type: "string", default: "subscriber" },
    consumer: { type: "string", default: os.hostname() },  // stable: a restart re-reads its unacked entries
    count: { type: "string", default: "100" }, "until-eos": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  } });
  if (a.help) return console.log(USAGE);
  if (!a.source) throw new Error("--source is required (the source name given to `vigil produce`)");
  if (!/^[1-9]\d*$/.test(a.count)) throw new Error(`--count must be a positive integer, not ${a.count}`);
  const url = parseUrl(a.url);
  const shown = redact(a.url);
  let redis;
  try {
    redis = await Redis.open(url.host, url.port);
  } catch (err) {
    throw new Error(`cannot connect to ${shown}: ${err.code || err.message}. Is the server running?`);
  }
  await login(redis, url, shown);
  const prefix = `${a.namespace}:{${a.source}}`;
  const keys = { results: `${prefix}:results`, meta: `${prefix}:meta` };
  await subscribe(redis, keys, { ...a, untilEos: a["until-eos"] });
  redis.close();
}

process.stdout.on("error", () => process.exit(0));  // the reader went away (| head)
main().catch((err) => {
  const usage = err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" ? `${USAGE}\n` : "";
  process.stderr.write(`subscriber.mjs: ${err.message}\n${usage}`);
  process.exit(2);
});
