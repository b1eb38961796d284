import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SERVER_NODE_FLAGS } from '../../load-tests/bench/infra.js';
import { heapFlagsOf } from '../src/cluster.js';

const root = new URL('../../', import.meta.url);
const V8_FLAG = /--[a-z-]+=\d+/g;

/**
 * The hub's V8 flags are written in several places: `npm start`, `npm run start:dist`, `npm run
 * cluster`, the image's command, and the benchmark, which gives them to every server it measures.
 * The benchmark's figures hold for the hub as shipped only while these agree.
 */
describe('the V8 flags the hub runs with', () => {
  const scripts = (JSON.parse(readFileSync(new URL('package.json', root), 'utf8')) as { scripts: Record<string, string> }).scripts;
  const cmd = /^CMD (\[.*\])$/m.exec(readFileSync(new URL('Dockerfile', root), 'utf8'))?.[1];

  it('when the hub is started by npm, by the image or by the benchmark, then it gets the same flags', () => {
    expect(SERVER_NODE_FLAGS.length).toBeGreaterThan(0);
    for (const name of ['start', 'start:dist', 'cluster']) expect(scripts[name].match(V8_FLAG), name).toEqual(SERVER_NODE_FLAGS);
    expect(cmd, 'the Dockerfile has a CMD').toBeDefined();
    expect((JSON.parse(cmd!) as string[]).join(' ').match(V8_FLAG)).toEqual(SERVER_NODE_FLAGS);
  });

  it('when npm run cluster starts its workers, then each gets every one of those flags', () => {
    expect(heapFlagsOf([...SERVER_NODE_FLAGS, '--import', 'tsx', '--expose-gc'])).toEqual(SERVER_NODE_FLAGS);
  });
});
