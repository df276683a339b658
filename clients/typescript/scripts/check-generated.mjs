// Fails when src/generated is not what @hey-api/openapi-ts makes of docs/openapi.json now:
// regenerates into a temp dir and compares every file.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

import { generate } from './generate.mjs';

const committed = 'src/generated';
const fresh = mkdtempSync(join(tmpdir(), 'openwork-client-'));

/** Every file under `root`, as paths relative to it, sorted. */
function list(root) {
  const out = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else out.push(relative(root, path));
    }
  };
  walk(root);
  return out.sort();
}

try {
  generate(fresh);
  const want = list(fresh);
  const have = list(committed);
  const differ = [
    ...want.filter((f) => !have.includes(f)).map((f) => `missing: ${f}`),
    ...have.filter((f) => !want.includes(f)).map((f) => `extra: ${f}`),
    ...want
      .filter((f) => have.includes(f))
      .filter((f) => readFileSync(join(fresh, f), 'utf8') !== readFileSync(join(committed, f), 'utf8'))
      .map((f) => `differs: ${f}`),
  ];
  if (differ.length > 0) {
    console.error(
      `clients/typescript/src/generated is not what docs/openapi.json generates:\n  ${differ.join('\n  ')}\n` +
        'regenerate it with `npm run generate` in clients/typescript and commit it',
    );
    process.exit(1);
  }
  console.log(`src/generated matches docs/openapi.json (${want.length} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
