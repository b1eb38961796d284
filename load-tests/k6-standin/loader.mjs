// Module resolution hooks for the VU workers: `k6`, `k6/http`, ... resolve to the stand-in modules.
const MODULES = new Set(['k6', 'k6/http', 'k6/ws', 'k6/metrics', 'k6/crypto', 'k6/encoding', 'k6/execution']);

export async function resolve(specifier, context, nextResolve) {
  if (MODULES.has(specifier)) {
    const file = specifier === 'k6' ? 'k6' : specifier.slice('k6/'.length);
    return { url: new URL(`./modules/${file}.mjs`, import.meta.url).href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
