// Builds the packages, and the service's copy of the client, from their sources.
//
//   node scripts/build.mjs           build dist/ of every package and write the service's
//                                    src/http/assets/changecast.{js,d.ts}
//   node scripts/build.mjs --check   build dist/, and fail if the service's committed copy
//                                    is not what this build makes (so `cargo build` never
//                                    needs node, and the two cannot drift apart)
//
// @changecast/client has one source, packages/client/src/changecast.{js,d.ts}: an ES module
// without dependencies, copied as the ESM build and wrapped (not compiled) into the
// CommonJS build and the service's UMD script. The other packages are TypeScript,
// compiled by tsc twice (ES modules, CommonJS).
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const repo = path.resolve(root, '../..');
const client = path.join(root, 'packages/client');
/** The service's copies, compiled into the binary by src/http/dashboard.rs. */
export const ASSETS = {
  js: path.join(repo, 'src/http/assets/changecast.js'),
  dts: path.join(repo, 'src/http/assets/changecast.d.ts'),
};

/** How the source ends: its exports, which each other form replaces with its own. */
const EXPORTS = '\nexport { Changecast };\nexport default Changecast;\n';

/** Splits the source into its leading comment and the code after it. */
function parts(source) {
  if (!source.endsWith(EXPORTS)) throw new Error(`changecast.js must end with exactly:${EXPORTS}`);
  const end = source.indexOf('*/\n');
  if (!source.startsWith('/*') || end < 0) throw new Error('changecast.js must start with its /* comment */');
  return { comment: source.slice(0, end + 3), code: source.slice(end + 3, -EXPORTS.length).replace(/^\n+/, '') };
}

const GENERATED = (what) =>
  `// Generated from clients/js/packages/client/src/${what} by clients/js/scripts/build.mjs: edit there.\n`;

/** Every file made from the client's source, by path. */
export function clientOutputs(source, dts) {
  const { comment, code } = parts(source);
  const indented = code.replace(/^(?=.)/gm, '  ');
  const umd = `${GENERATED('changecast.js')}${comment.replace(' */\n', ` *
 * Served by the service at GET /changecast.js. Both ways of loading work:
 * \`import { Changecast } from '/changecast.js'\` and a plain \`<script src="/changecast.js">\`
 * (then \`window.Changecast\`). A classic script cannot hold \`export\`, so the service serves
 * this file as it is to classic scripts and with an \`export\` trailer to module loaders
 * (told apart by \`Sec-Fetch-Mode\`; force either with \`?format=module\` or
 * \`?format=script\`). Either way \`globalThis.Changecast\` is set.
 */\n`)}(function (root, factory) {
  'use strict';
  var Changecast = factory();
  if (typeof module === 'object' && module && module.exports) {
    module.exports = Changecast;
    module.exports.Changecast = Changecast;
    module.exports.default = Changecast;
  }
  if (root) root.Changecast = Changecast;
})(typeof globalThis !== 'undefined' ? globalThis : typeof window !== 'undefined' ? window : this, function () {
  'use strict';

${indented}
  return Changecast;
});
`;
  const cjs = `'use strict';\n${comment}\n${code}
Object.defineProperty(exports, '__esModule', { value: true });
exports.Changecast = Changecast;
exports.default = Changecast;
`;
  const servedDts = `${GENERATED('changecast.d.ts')}${dts}
declare global {
  interface Window {
    Changecast: typeof Changecast;
  }
}
`;
  return {
    [path.join(client, 'dist/index.js')]: source,
    [path.join(client, 'dist/index.cjs')]: cjs,
    [path.join(client, 'dist/index.d.ts')]: dts,
    [path.join(client, 'dist/index.d.cts')]: dts,
    [ASSETS.js]: umd,
    [ASSETS.dts]: servedDts,
  };
}

export async function readClientSources() {
  return [
    await readFile(path.join(client, 'src/changecast.js'), 'utf8'),
    await readFile(path.join(client, 'src/changecast.d.ts'), 'utf8'),
  ];
}

function tsc(args) {
  const bin = path.join(root, 'node_modules/typescript/bin/tsc');
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [bin, ...args], { cwd: root }, (error, stdout, stderr) => {
      if (error) reject(new Error(`tsc ${args.join(' ')}:\n${stdout}${stderr}`));
      else resolve();
    });
  });
}

/** A TypeScript package: ES modules into dist/esm, CommonJS into dist/cjs. */
async function buildTypeScript(name) {
  const dir = path.join(root, 'packages', name);
  await rm(path.join(dir, 'dist'), { recursive: true, force: true });
  const project = path.join(dir, 'tsconfig.json');
  await Promise.all([
    tsc(['-p', project, '--outDir', path.join(dir, 'dist/esm'), '--module', 'nodenext', '--moduleResolution', 'nodenext']),
    tsc(['-p', project, '--outDir', path.join(dir, 'dist/cjs'), '--module', 'commonjs', '--moduleResolution', 'node10']),
  ]);
  // The package is "type": "module"; the CommonJS half says otherwise for itself.
  await writeFile(path.join(dir, 'dist/cjs/package.json'), '{\n  "type": "commonjs"\n}\n');
}

async function main() {
  const check = process.argv.includes('--check');
  const outputs = clientOutputs(...(await readClientSources()));
  await rm(path.join(client, 'dist'), { recursive: true, force: true });
  await mkdir(path.join(client, 'dist'), { recursive: true });
  const stale = [];
  for (const [file, text] of Object.entries(outputs)) {
    const asset = Object.values(ASSETS).includes(file);
    if (asset && check) {
      const committed = await readFile(file, 'utf8').catch(() => null);
      if (committed !== text) stale.push(path.relative(repo, file));
      continue;
    }
    await writeFile(file, text);
  }
  if (stale.length) {
    console.error(`${stale.join(' and ')} ${stale.length > 1 ? 'are' : 'is'} not what clients/js/packages/client/src makes:`
      + ' run `npm run build` in clients/js and commit the result.');
    process.exit(1);
  }
  await Promise.all([buildTypeScript('react'), buildTypeScript('tanstack-query')]);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
