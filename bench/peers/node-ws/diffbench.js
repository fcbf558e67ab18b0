'use strict';
// Diff + mapping in the seed's design: map every session of a listing, then diff against the
// previous snapshot by JSON.stringify. Usage: node diffbench.js BASE.json CHANGED.json REPEATS
// (each file a JSON array of Jules Sessions). Prints {"median_ms", "p95_ms",
// "decode_median_ms", "changes"}.
// Parsing is outside the timed section, as in the control room's figure.
const fs = require('node:fs');
const { mapListing, diffSnapshots } = require('./server.js');

const [baseFile, changedFile, repeatsArg] = process.argv.slice(2);
const repeats = Number(repeatsArg || 20);
const baseText = fs.readFileSync(baseFile, 'utf8');
const changedText = fs.readFileSync(changedFile, 'utf8');
const previous = mapListing(JSON.parse(baseText), new Map());
const times = [];
const parses = [];
let changes = 0;
for (let i = 0; i < repeats; i++) {
  const p0 = process.hrtime.bigint();
  const listing = JSON.parse(changedText); // fresh objects every poll, as after a fetch
  const t0 = process.hrtime.bigint();
  const current = mapListing(listing, previous);
  changes = diffSnapshots(previous, current).length;
  times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  parses.push(Number(t0 - p0) / 1e6);
}
const at = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
};
process.stdout.write(JSON.stringify({
  median_ms: at(times, 0.5), p95_ms: at(times, 0.95), decode_median_ms: at(parses, 0.5), changes,
}) + '\n');
