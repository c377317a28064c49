// What a node-postgres application caches for a row: JSON.stringify of the
// row object that pg returns for SELECT * FROM <table> WHERE code = $1.
// Usage: PGHOST=... PGPORT=... PGDATABASE=... node app_json.js <table> <code>...
// (the standard libpq environment variables, which node-postgres reads)
// Prints one line per code: the JSON, or "(none)".
'use strict';
const { Client } = require('pg');

(async () => {
	const [table, ...codes] = process.argv.slice(2);
	const client = new Client();
	await client.connect();
	for (const code of codes) {
		const res = await client.query(`SELECT * FROM ${table} WHERE code = $1`, [code]);
		console.log(res.rows.length ? JSON.stringify(res.rows[0]) : '(none)');
	}
	await client.end();
})().catch((e) => { console.error(e); process.exit(1); });
