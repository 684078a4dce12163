// The packages as people get them: `npm pack` tarballs checked by publint and
// @arethetypeswrong/cli, installed into a fresh project, imported from ESM and CommonJS,
// and their types resolved by `tsc --strict` under Node's ESM and CommonJS rules.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { checkPackage, createPackageFromTarballData } from '@arethetypeswrong/core';
import { publint } from 'publint';
import { formatMessage } from 'publint/utils';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const PACKAGES = ['client', 'react', 'tanstack-query'];
const run = promisify(execFile);
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Runs a command; on failure, the error carries its output. */
async function sh(command, args, options = {}) {
  try {
    return await run(command, args, { maxBuffer: 16 << 20, timeout: 90_000, ...options });
  } catch (error) {
    throw new Error(`${command} ${args.join(' ')} failed:\n${error.stdout || ''}${error.stderr || ''}${error.message}`);
  }
}

let work;
/** name → tarball path */
const tarballs = {};

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'changecast-pack-'));
  const { stdout } = await sh(npm, ['pack', '--workspaces', '--json', '--pack-destination', work], { cwd: root });
  for (const packed of JSON.parse(stdout)) {
    tarballs[packed.name] = path.join(work, packed.filename);
    console.log(`packed ${packed.filename}: ${packed.size} bytes (${packed.unpackedSize} unpacked, ${packed.files.length} files)`);
  }
});
after(() => rm(work, { recursive: true, force: true }));

test('each package passes publint (strict, suggestions included)', async () => {
  for (const name of PACKAGES) {
    const pkgDir = path.join(root, 'packages', name);
    const tarball = await readFile(tarballs[`@changecast/${name}`]);
    const { messages } = await publint({ strict: true, level: 'suggestion', pack: { tarball: tarball.buffer.slice(tarball.byteOffset, tarball.byteOffset + tarball.byteLength) } });
    const pkg = JSON.parse(await readFile(path.join(pkgDir, 'package.json'), 'utf8'));
    assert.deepEqual(messages.map((m) => `${m.type}: ${formatMessage(m, pkg)}`), [], `publint on @changecast/${name}`);
  }
});

test('each tarball passes Are the Types Wrong (node10, node16 CJS and ESM, bundler)', async () => {
  // @arethetypeswrong/cli's checks, in this process: `npx attw <tarball>` runs the same.
  for (const [name, tarball] of Object.entries(tarballs)) {
    const analysis = await checkPackage(createPackageFromTarballData(new Uint8Array(await readFile(tarball))));
    assert.ok(analysis.types, `${name} has types`);
    assert.deepEqual(analysis.problems, [], `attw on ${name}`);
  }
});

test('a fresh project installs the tarballs and imports them from ESM and CommonJS, types under tsc --strict', async () => {
  assert.deepEqual(Object.keys(tarballs).sort(), PACKAGES.map((name) => `@changecast/${name}`).sort());
  const project = path.join(work, 'project');
  await sh('mkdir', ['-p', project]);
  await writeFile(path.join(project, 'package.json'), JSON.stringify({ name: 'fresh', private: true, version: '1.0.0' }));
  // The peers a user brings, at the versions the workspace tests with (so from npm's cache).
  const version = async (name) => JSON.parse(await readFile(path.join(root, 'node_modules', name, 'package.json'), 'utf8')).version;
  const peers = await Promise.all(['react', '@types/react', '@tanstack/query-core'].map(async (name) => `${name}@${await version(name)}`));
  await sh(npm, ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...Object.values(tarballs), ...peers], { cwd: project });

  await writeFile(path.join(project, 'esm.mjs'), `
import { Changecast } from '@changecast/client';
import { useChangecast, useLiveSnapshot, LiveList } from '@changecast/react';
import { syncQueries } from '@changecast/tanstack-query';
const cc = new Changecast({ baseUrl: 'http://127.0.0.1:1', token: 't', types: ['ticket'] });
console.log(JSON.stringify([cc.status, typeof useChangecast, typeof useLiveSnapshot, typeof LiveList, typeof syncQueries]));
`);
  await writeFile(path.join(project, 'cjs.cjs'), `
const { Changecast } = require('@changecast/client');
const { useChangecast, useLiveSnapshot, LiveList } = require('@changecast/react');
const { syncQueries } = require('@changecast/tanstack-query');
const cc = new Changecast({ baseUrl: 'http://127.0.0.1:1', token: 't', types: ['ticket'] });
console.log(JSON.stringify([cc.status, typeof useChangecast, typeof useLiveSnapshot, typeof LiveList, typeof syncQueries]));
`);
  const expected = JSON.stringify(['idle', 'function', 'function', 'function', 'function']);
  for (const file of ['esm.mjs', 'cjs.cjs']) {
    const { stdout } = await sh(process.execPath, [file], { cwd: project });
    assert.equal(stdout.trim(), expected, file);
  }

  // The same imports, typed: .mts resolves the "import" conditions, .cts the "require" ones.
  const typed = (kind) => `
import { Changecast, type ResourceChange } from '@changecast/client';
import { LiveList, useLiveSnapshot, type UseLiveSnapshotResult } from '@changecast/react';
import { syncQueries, type QueryMap } from '@changecast/tanstack-query';
import { QueryClient } from '@tanstack/query-core';
interface Ticket { id: string; title: string; [column: string]: unknown }
const cc = new Changecast<{ ticket: Ticket }>({ token: 't', types: ['ticket'] });
cc.on('ticket', (change) => { const title: string = change.resource.title; void title; });
cc.on('change', (change: ResourceChange) => void change.resource_id);
const map: QueryMap = { ticket: { list: ['tickets'], detail: (id) => ['ticket', id] } };
const stop: () => void = syncQueries(new QueryClient(), cc, map);
const list = new LiveList<Ticket>('ticket');
const rows: Ticket[] = list.list;
type Result = UseLiveSnapshotResult<Ticket>;
const hook: (o: { type: string; token: string }) => Result = (o) => useLiveSnapshot<Ticket>(o);
// @ts-expect-error status is a closed set of values
const wrong: 'open' = cc.status;
export const ${kind} = { stop, rows, hook, wrong };
`;
  await writeFile(path.join(project, 'esm.mts'), typed('esm'));
  await writeFile(path.join(project, 'cjs.cts'), typed('cjs'));
  await writeFile(path.join(project, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022',
      lib: ['es2022', 'dom'], types: [], skipLibCheck: false,
    },
    files: ['esm.mts', 'cjs.cts'],
  }));
  await sh(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', project], { cwd: project });
});
