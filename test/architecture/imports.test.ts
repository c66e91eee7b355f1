// The house has one direction: every import in src/ points down the layer order below (or stays in
// its own module). A file that reaches up, or sideways into a peer module of its layer, fails here.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';

const SRC = path.resolve(__dirname, '../../src');

/**
 * The layer order, top to bottom, written once. Each entry is a module: a folder of src/ ("api/")
 * or a single file ("main.ts"). A module may import its own files and any module of a LOWER layer;
 * modules that share a layer are peers and do not import each other.
 */
const LAYERS: string[][] = [
  ['main.ts', 'cli/'],                               // entry points: the daemon and tetrixctl
  ['uninstall.ts', 'preflight.ts'],                  // entry-point helpers (tetrixd uninstall, host checks)
  ['api/'],                                          // gRPC server, auth, validation, transport
  ['exec/'],                                         // exec and terminal sessions in running workspaces
  ['workspace/'],                                    // the lifecycle, its records, ports and their adapters
  ['prebuild/', 'source/'],                          // tasks channel, provenance; git content (services the lifecycle uses)
  ['images/'],                                       // OCI images: registry client, layer store, pulls
  ['sandbox/', 'network/', 'content/', 'logs/', 'storage/'], // the mechanisms, independent of each other
  ['crypto/'],                                       // keys, the streaming AEAD, sealing, the PKI
  ['config/', 'state-dir.ts', 'node-flags.ts'],      // one validated config; the state dir's lock and claims
  ['native/'],                                       // the typed wrapper of the C addon
  ['errors.ts', 'promises.ts', 'layout.ts', 'generated/'], // shared by every layer: DomainError, promise helpers, the state dir's layout, proto types
];

function moduleOf(rel: string): string {
  const slash = rel.indexOf('/');
  return slash < 0 ? rel : rel.slice(0, slash + 1);
}

function layerOf(mod: string): number {
  const i = LAYERS.findIndex((layer) => layer.includes(mod));
  return i;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** Relative specifiers of static, type-only, re-export, dynamic and require() imports. */
function importsOf(text: string): string[] {
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]*|\.{1,2})['"]/gm;
  return [...text.matchAll(re)].map((m) => m[1]!);
}

/** src-relative path of the file a specifier names (a folder means its index.ts). */
function resolveImport(fromFile: string, spec: string): string {
  const base = path.resolve(path.dirname(fromFile), spec);
  for (const candidate of [base, `${base}.ts`, path.join(base, 'index.ts')]) {
    if (fs.existsSync(candidate) && fs.statSync(candidate).isFile()) return path.relative(SRC, candidate);
  }
  return path.relative(SRC, base);
}

interface Edge { from: string; to: string }

function edges(): Edge[] {
  const out: Edge[] = [];
  for (const file of sourceFiles(SRC)) {
    const from = path.relative(SRC, file);
    if (from.startsWith('generated/')) continue;
    for (const spec of importsOf(fs.readFileSync(file, 'utf8'))) out.push({ from, to: resolveImport(file, spec) });
  }
  return out;
}

t.test('every module of src/ has a place in the layer order', async (t) => {
  const unplaced = [...new Set(sourceFiles(SRC).map((f) => moduleOf(path.relative(SRC, f))))].filter((m) => layerOf(m) < 0);
  t.same(unplaced, [], 'modules missing from LAYERS');
});

t.test('imports in src/ only point down the layers', async (t) => {
  const all = edges();
  t.ok(all.length > 100, `the scan finds the imports (${all.length})`);
  const wrong: string[] = [];
  for (const { from, to } of all) {
    const a = moduleOf(from);
    const b = moduleOf(to);
    if (a === b) continue;
    const la = layerOf(a);
    const lb = layerOf(b);
    if (lb > la) continue;
    wrong.push(`${from} -> ${to} (${lb === la ? `peers in layer ${la}` : `layer ${la} imports layer ${lb}`})`);
  }
  t.same(wrong, [], 'upward or sideways imports');
});
