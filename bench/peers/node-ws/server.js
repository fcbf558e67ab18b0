'use strict';
// The seed's own design (backend/src/ws.ts in the domain document), rendered faithfully with
// Node `ws` as the benchmark's reference peer:
//   - auth before upgrade from `Sec-WebSocket-Protocol: bearer.<token>`, 401 otherwise;
//   - a Set of clients; heartbeat every HEARTBEAT_INTERVAL_MS: terminate who did not pong,
//     ping the others;
//   - poll the Jules list API (every page), map, diff against the previous snapshot by
//     JSON.stringify, and for every delta: for every open client, if bufferedAmount is
//     under 1 MiB `client.send(JSON.stringify(delta))`, else terminate it;
//   - pino-style JSON log lines for the seed's events.
// Differences from the seed, each one in the peer's favour or neutral, all shared with the
// control room so the comparison is about the fan-out: the first listing is a baseline (not
// a flood of `created`); polls are chained (the next starts POLL_INTERVAL_MS after one
// ends) like the control room's poller; the mapping is the control room's table.
//
// PER_MESSAGE_DEFLATE=1 turns on `ws`'s own permessage-deflate, as configured by most users:
// `perMessageDeflate: { threshold: 512 }` (the control room's COMPRESSION_MIN_BYTES), the
// library's defaults otherwise (context takeover, zlib level default, compression on the
// libuv thread pool), so every message is compressed once per client that accepted it.
//
// BENCH_MODE=publish replaces the poller with a timer: on SIGUSR2, PUBLISH_COUNT deltas of
// about 1 KB at PUBLISH_RATE per second, each broadcast exactly as above (the "broadcast
// alone" workload).

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const env = process.env;
const PORT = Number(env.PORT || 3001);
const HOST = env.HOST || '127.0.0.1';
const LOCAL_TOKEN = env.LOCAL_TOKEN || '';
const JULES_API_BASE = (env.JULES_API_BASE || 'https://jules.googleapis.com/v1alpha').replace(/\/$/, '');
const JULES_API_KEY = env.JULES_API_KEY || '';
const POLL_INTERVAL = Number(env.POLL_INTERVAL_MS || 5_000);
const HEARTBEAT_INTERVAL = Number(env.HEARTBEAT_INTERVAL_MS || 30_000);
const MAX_BUFFER = Number(env.MAX_BUFFER_BYTES || 1_048_576); // 1MB, the seed's limit
const MODE = env.BENCH_MODE || 'poll';
const PUBLISH_RATE = Number(env.PUBLISH_RATE || 20);
const PUBLISH_COUNT = Number(env.PUBLISH_COUNT || 100);
const LOG_LEVEL = env.LOG_LEVEL || 'info';
const PER_MESSAGE_DEFLATE = env.PER_MESSAGE_DEFLATE === '1' ? { threshold: 512 } : false;
const LEVELS = { debug: 10, info: 20, warning: 30, warn: 30, error: 40 };

function log(level, msg, fields) {
  if (LEVELS[level] < LEVELS[LOG_LEVEL]) return;
  process.stdout.write(
    JSON.stringify({ level, time: new Date().toISOString(), msg, ...fields }) + '\n',
  );
}

// ---- mapping: Jules Session -> JulesSession (the control room's table) ----
const PLAN_STATUS = {
  QUEUED: 'pending', PLANNING: 'pending', AWAITING_PLAN_APPROVAL: 'pending',
  IN_PROGRESS: 'in_progress', AWAITING_USER_FEEDBACK: 'in_progress', PAUSED: 'in_progress',
  ACTIVE: 'in_progress', COMPLETED: 'succeeded', FAILED: 'failed',
};
const BEFORE_APPROVAL = new Set(['STATE_UNSPECIFIED', 'QUEUED', 'PLANNING', 'AWAITING_PLAN_APPROVAL']);
const PAST_APPROVAL = new Set(['IN_PROGRESS', 'AWAITING_USER_FEEDBACK', 'PAUSED', 'COMPLETED', 'ACTIVE']);

function repositoryOf(source) {
  if (source.startsWith('sources/github/')) return source.slice('sources/github/'.length);
  if (source.startsWith('sources/')) return source.slice('sources/'.length);
  return source;
}

function approvalOf(s, previous) {
  const state = s.state || 'STATE_UNSPECIFIED';
  if (BEFORE_APPROVAL.has(state)) return { state: 'pending' };
  if (PAST_APPROVAL.has(state)) {
    if (!previous) return { state: 'approved' };
    if (previous.approval.state === 'approved') return previous.approval;
    return s.updateTime ? { state: 'approved', approvedAt: s.updateTime } : { state: 'approved' };
  }
  return previous ? previous.approval : { state: 'pending' };
}

function mapSession(s, previous) {
  const ctx = s.sourceContext;
  const out = {
    id: s.id || (s.name || '').split('/').pop(),
    repository: ctx ? repositoryOf(ctx.source || '') : '',
    branch: ctx && ctx.githubRepoContext ? ctx.githubRepoContext.startingBranch || '' : '',
    title: s.title || '',
    state: s.state || 'STATE_UNSPECIFIED',
    planStatus: PLAN_STATUS[s.state] || 'pending',
    approval: approvalOf(s, previous),
    participants: [],
    createdAt: s.createTime || '',
    updatedAt: s.updateTime || '',
    url: s.url || '',
  };
  for (const o of s.outputs || []) {
    if (o.pullRequest && o.pullRequest.url) {
      out.pullRequest = { url: o.pullRequest.url, title: o.pullRequest.title || '' };
      break;
    }
  }
  return out;
}

function mapListing(raw, previous) {
  const current = new Map();
  for (const s of raw) {
    if (s.archived) continue;
    const m = mapSession(s, previous.get(s.id));
    if (m.id && !current.has(m.id)) current.set(m.id, m);
  }
  return current;
}

// ---- diff by JSON.stringify, as the seed's "shallow comparison" of snapshots ----
function diffSnapshots(previous, current) {
  const deltas = [];
  const timestamp = new Date().toISOString();
  for (const [id, before] of previous) {
    if (!current.has(id)) deltas.push({ type: 'deleted', sessionId: id, before, timestamp });
  }
  for (const [id, after] of current) {
    const before = previous.get(id);
    if (before === undefined) {
      deltas.push({ type: 'created', sessionId: id, after, timestamp });
    } else if (JSON.stringify(before) !== JSON.stringify(after)) {
      deltas.push({ type: 'updated', sessionId: id, before, after, timestamp });
    }
  }
  return deltas;
}

// ---- the WebSocket server ----
const wsClients = new Set();

function broadcast(delta) {
  log('info', 'Broadcasting session delta', {
    type: delta.type, sessionId: delta.sessionId, clientCount: wsClients.size,
    payloadSize: JSON.stringify(delta).length,
  });
  wsClients.forEach((client) => {
    if (client.readyState === WebSocket.OPEN) {
      if (client.bufferedAmount < MAX_BUFFER) {
        client.send(JSON.stringify(delta));
      } else {
        log('warn', 'Terminating slow consumer', {
          bufferedAmount: client.bufferedAmount, reason: 'backpressure_limit',
        });
        client.terminate();
        wsClients.delete(client);
      }
    }
  });
}

function bearerProtocol(header) {
  if (!header) return null;
  for (const p of header.split(',').map((x) => x.trim())) {
    if (p.toLowerCase().startsWith('bearer.') && p.slice('bearer.'.length) === LOCAL_TOKEN) return p;
  }
  return null;
}

function setupWebSocket(server) {
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: PER_MESSAGE_DEFLATE,
    handleProtocols: (protocols) => {
      for (const p of protocols) if (p.toLowerCase().startsWith('bearer.')) return p;
      return false;
    },
  });
  server.on('upgrade', (req, socket, head) => {
    if (bearerProtocol(req.headers['sec-websocket-protocol']) === null) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n' +
        'Content-Length: 24\r\nConnection: close\r\n\r\n{"error":"unauthorized"}');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  wss.on('connection', (ws) => {
    ws.isAlive = true;
    wsClients.add(ws);
    log('info', 'WebSocket client connected', { clientCount: wsClients.size });
    ws.on('pong', () => { ws.isAlive = true; });
    ws.on('close', () => {
      wsClients.delete(ws);
      log('info', 'WebSocket client disconnected', { clientCount: wsClients.size });
    });
    ws.on('error', () => { wsClients.delete(ws); });
  });
  setInterval(() => {
    wsClients.forEach((ws) => {
      if (ws.isAlive === false) {
        log('warn', 'Terminating dead connection', { reason: 'heartbeat_timeout' });
        ws.terminate();
        wsClients.delete(ws);
        return;
      }
      ws.isAlive = false;
      ws.ping();
    });
  }, HEARTBEAT_INTERVAL);
}

// ---- the poller ----
async function listSessions() {
  const all = [];
  let token = '';
  for (let page = 0; page < 2000; page++) {
    const url = `${JULES_API_BASE}/sessions?pageSize=100` + (token ? `&pageToken=${encodeURIComponent(token)}` : '');
    const res = await fetch(url, { headers: { 'X-Goog-Api-Key': JULES_API_KEY } });
    if (!res.ok) throw new Error(`upstream ${res.status}`);
    const body = await res.json();
    if (body.sessions) all.push(...body.sessions);
    token = body.nextPageToken;
    if (!token) return all;
  }
  throw new Error('too many pages');
}

let snapshot = null;

async function pollOnce() {
  try {
    const raw = await listSessions();
    const current = mapListing(raw, snapshot || new Map());
    if (snapshot !== null) {
      for (const delta of diffSnapshots(snapshot, current)) broadcast(delta);
    }
    snapshot = current;
  } catch (err) {
    log('warn', 'Upstream poll failed', { error: String(err) });
  }
}

function pollForever() {
  pollOnce().then(() => setTimeout(pollForever, POLL_INTERVAL));
}

// ---- publish mode: deltas straight into the broadcast, no upstream ----
const PR_TITLE = 'Keep the snapshot when a later page fails, and confirm deletions with a GET';

function benchSession(title, state) {
  return {
    id: '10000000042', repository: 'acme/widgets', branch: 'main', title, state,
    planStatus: state === 'IN_PROGRESS' ? 'in_progress' : 'pending',
    approval: { state: 'approved', approvedAt: '2025-11-10T12:05:00.000000Z' },
    participants: [],
    createdAt: '2025-11-10T12:00:00.000000Z', updatedAt: '2025-11-10T12:05:00.000000Z',
    url: 'https://jules.google.com/session/10000000042',
    pullRequest: { url: 'https://github.com/acme/widgets/pull/42', title: PR_TITLE },
  };
}

function nowNs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1e6).toString();
}

let cid = 0;
let before = benchSession('bench 0 0', 'PLANNING');
let publishing = false;

function publishRun() {
  if (publishing) return;
  publishing = true;
  const start = performance.now();
  const period = 1000 / PUBLISH_RATE;
  let i = 0;
  const step = () => {
    cid += 1;
    const after = benchSession(`bench ${cid} ${nowNs()}`, 'IN_PROGRESS');
    broadcast({ type: 'updated', sessionId: after.id, before, after, timestamp: new Date().toISOString() });
    before = after;
    i += 1;
    if (i >= PUBLISH_COUNT) { publishing = false; return; }
    setTimeout(step, Math.max(0, start + i * period - performance.now()));
  };
  step();
}

function main() {
  const server = http.createServer((req, res) => {
    res.writeHead(404, { 'Content-Type': 'application/json' });
    res.end('{"error":"not_found"}');
  });
  setupWebSocket(server);
  server.listen(PORT, HOST, () => {
    process.stdout.write(`READY ${server.address().port}\n`);
    if (MODE === 'publish') process.on('SIGUSR2', publishRun);
    else pollForever();
  });
  const stop = () => {
    wsClients.forEach((ws) => ws.close(1001, 'server shutting down'));
    server.close();
    setTimeout(() => process.exit(0), 200).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

module.exports = { mapSession, mapListing, diffSnapshots };

if (require.main === module) main();
