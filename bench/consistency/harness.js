// Consistency harness: plain cache-aside readers racing writers on a few hot
// codes, measuring how long Redis serves a row that is no longer the
// committed one.
//
// Readers (as the applications run them): GET key; on a miss SELECT the row,
// wait READ_TO_SET_MS (the API's round trips and processing), then
// SET key JSON.stringify(row) EX 300.  Writers: UPDATE the label of a hot
// code to a new version number, WRITES_PER_S in all, for WRITE_S seconds;
// then READ_ONLY_S seconds of reads only.  A monitor GETs every hot key in a
// tight loop too, so staleness is observed even when no reader looks.
//
// Every observation (a GET issued at time t that returned version v of a
// code) is stale if a newer version of that code had committed before t;
// its age is t minus the commit of the version that superseded v (the commit
// time is when the writer's UPDATE returned, so ages are slightly
// underestimated, by less than the UPDATE's round trip).  At the end, every
// hot key holding a superseded row is a "stale key left": it would live out
// its TTL.
//
// Env: PGHOST/PGPORT/PGDATABASE/PGUSER (libpq variables), REDIS_PORT,
// READERS (6), CODES (3), WRITES_PER_S (300), WRITE_S (10), READ_ONLY_S (2),
// READ_TO_SET_MS (10), LABEL (printed with the result).
// Prints one JSON object.
'use strict';
const { Client } = require('pg');
const Redis = require('ioredis');

const env = (k, d) => (process.env[k] !== undefined ? Number(process.env[k]) : d);
const READERS = env('READERS', 6);
const NCODES = env('CODES', 3);
const WRITES_PER_S = env('WRITES_PER_S', 300);
const WRITE_S = env('WRITE_S', 10);
const READ_ONLY_S = env('READ_ONLY_S', 2);
const READ_TO_SET_MS = env('READ_TO_SET_MS', 10);
const REDIS_PORT = env('REDIS_PORT', 6379);

const now = () => Number(process.hrtime.bigint()) / 1e6;	// ms
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const codes = Array.from({ length: NCODES }, (_, i) => `hot_${i + 1}`);
const keyOf = (c) => `entity:metadata:${c}`;

// per code: commit times of each version (index = version number)
const commits = Object.fromEntries(codes.map((c) => [c, [0]]));
const stats = { reads: 0, hits: 0, stale: 0, staleOver20: 0, staleOver100: 0, maxAge: 0, fills: 0,
	readToSet: [], monitorObs: 0, monitorStale: 0,
	// reader hits by age of staleness (ms upper bounds; 0 = fresh) and phase
	ageHist: { '0': 0, '1': 0, '2': 0, '5': 0, '10': 0, '20': 0, '100': 0, 'inf': 0 },
	hitsReadOnly: 0, staleReadOnly: 0 };
let readOnlyFrom = Infinity;
function bucket(age) {
	if (age <= 0) return '0';
	for (const b of ['1', '2', '5', '10', '20', '100'])
		if (age <= Number(b)) return b;
	return 'inf';
}

function versionOf(value) {
	try {
		const label = JSON.parse(value).label;
		const m = /^v(\d+)$/.exec(label);
		return m ? Number(m[1]) : -1;
	} catch (e) {
		return -1;
	}
}

// how stale an observation of version v of code c, issued at t, is (0 = fresh)
function staleAge(c, v, t) {
	const cs = commits[c];
	if (v < 0 || v + 1 >= cs.length || cs[v + 1] > t)
		return 0;
	return t - cs[v + 1];
}

function observe(c, value, t, fromMonitor) {
	const age = staleAge(c, versionOf(value), t);
	if (fromMonitor) {
		stats.monitorObs++;
		if (age > 0) stats.monitorStale++;
	} else {
		stats.hits++;
		if (age > 0) stats.stale++;
		stats.ageHist[bucket(age)]++;
		if (t >= readOnlyFrom) {
			stats.hitsReadOnly++;
			if (age > 0) stats.staleReadOnly++;
		}
		if (age > 20) stats.staleOver20++;
		if (age > 100) stats.staleOver100++;
	}
	if (age > stats.maxAge) stats.maxAge = age;
}

async function reader(stopAt) {
	const pg = new Client();
	await pg.connect();
	const redis = new Redis({ port: REDIS_PORT, host: '127.0.0.1' });
	let i = Math.floor(Math.random() * NCODES);
	while (now() < stopAt) {
		const c = codes[i++ % NCODES];
		const t = now();
		const v = await redis.get(keyOf(c));
		stats.reads++;
		if (v !== null) {
			observe(c, v, t, false);
			continue;
		}
		const res = await pg.query('SELECT * FROM app.entity WHERE code = $1', [c]);
		const tRead = now();
		await sleep(READ_TO_SET_MS);
		await redis.set(keyOf(c), JSON.stringify(res.rows[0]), 'EX', 300);
		stats.readToSet.push(now() - tRead);
		stats.fills++;
	}
	await pg.end();
	redis.disconnect();
}

async function monitor(stopAt) {
	const redis = new Redis({ port: REDIS_PORT, host: '127.0.0.1' });
	while (now() < stopAt) {
		const t = now();
		const vals = await redis.mget(codes.map(keyOf));
		vals.forEach((v, j) => { if (v !== null) observe(codes[j], v, t, true); });
	}
	redis.disconnect();
}

async function writer(c, perSecond, stopAt) {
	const pg = new Client();
	await pg.connect();
	const interval = 1000 / perSecond;
	let next = now();
	while (now() < stopAt) {
		const version = commits[c].length;
		await pg.query('UPDATE app.entity SET label = $1 WHERE code = $2', [`v${version}`, c]);
		commits[c].push(now());
		next += interval;
		const wait = next - now();
		if (wait > 0) await sleep(wait);
	}
	await pg.end();
}

async function main() {
	const setup = new Client();
	await setup.connect();
	for (const c of codes)
		await setup.query(`INSERT INTO app.entity (code, label) VALUES ($1, 'v0')
			ON CONFLICT (code) DO UPDATE SET label = 'v0'`, [c]);
	await setup.query("SELECT entity_cache.sync('10 s')");
	const redis = new Redis({ port: REDIS_PORT, host: '127.0.0.1' });
	await redis.del(...codes.map(keyOf));
	for (const c of codes) commits[c] = [now()];

	const start = now();
	const writeEnd = start + WRITE_S * 1000;
	const end = writeEnd + READ_ONLY_S * 1000;
	readOnlyFrom = writeEnd;
	await Promise.all([
		...codes.map((c) => writer(c, WRITES_PER_S / NCODES, writeEnd)),
		...Array.from({ length: READERS }, () => reader(end)),
		monitor(end),
	]);

	// stale keys left: a superseded row still cached after the read-only phase
	let left = 0;
	for (const c of codes) {
		const v = await redis.get(keyOf(c));
		if (v !== null && staleAge(c, versionOf(v), now()) > 0) left++;
	}
	const rts = stats.readToSet.sort((a, b) => a - b);
	const pct = (p) => (rts.length ? rts[Math.min(rts.length - 1, Math.floor(p * rts.length))] : 0);
	const writes = codes.reduce((n, c) => n + commits[c].length - 1, 0);
	const settings = await setup.query(`SELECT current_setting('entity_cache.mode') AS mode,
		current_setting('entity_cache.redelete_delay') AS redelete_delay,
		current_setting('entity_cache.redelete_steps') AS redelete_steps`);
	console.log(JSON.stringify({
		label: process.env.LABEL || '',
		mode: settings.rows[0].mode,
		redelete_delay: settings.rows[0].redelete_delay,
		redelete_steps: Number(settings.rows[0].redelete_steps),
		writes,
		reads: stats.reads,
		hits: stats.hits,
		fills: stats.fills,
		stale_reads: stats.stale,
		stale_fraction: stats.hits ? stats.stale / stats.hits : 0,
		stale_reads_over_20ms: stats.staleOver20,
		stale_reads_over_100ms: stats.staleOver100,
		monitor_observations: stats.monitorObs,
		monitor_stale: stats.monitorStale,
		monitor_stale_fraction: stats.monitorObs ? stats.monitorStale / stats.monitorObs : 0,
		longest_stale_ms: Math.round(stats.maxAge * 10) / 10,
		stale_keys_left: left,
		stale_age_histogram_ms: stats.ageHist,
		read_only_phase: { hits: stats.hitsReadOnly, stale: stats.staleReadOnly },
		read_to_set_ms: { p50: pct(0.5), p99: pct(0.99), max: rts.length ? rts[rts.length - 1] : 0 },
	}));
	await setup.end();
	redis.disconnect();
}

main().catch((e) => { console.error(e); process.exit(1); });
