import { describe, expect, it } from 'vitest';
import { summarizeAllocations } from '../../load-tests/bench/profile-top.js';

const frame = (functionName: string, url: string) => ({ functionName, url, lineNumber: 0 });

describe('the bench profile reader, allocations', () => {
  it("when Node's internals allocate for a library, then the bytes are the library's; a hub file's own bytes stay its own", () => {
    const profile = {
      head: {
        callFrame: frame('(root)', ''),
        selfSize: 0,
        children: [
          {
            callFrame: frame('orderReady', 'file:///app/server/src/dispatch/dispatch.service.ts'),
            selfSize: 100,
            children: [
              {
                callFrame: frame('write', 'file:///app/node_modules/postgres/src/connection.js'),
                selfSize: 50,
                children: [{ callFrame: frame('writeGeneric', 'node:internal/stream_base_commons'), selfSize: 30, children: [] }],
              },
            ],
          },
          { callFrame: frame('(garbage collector)', ''), selfSize: 7, children: [] },
        ],
      },
    };
    const summary = summarizeAllocations(profile);
    expect(summary.totalBytes).toBe(187);
    expect(Object.fromEntries(summary.byOwner)).toEqual({ 'node_modules/postgres': 80, 'server/src/dispatch/dispatch.service.ts': 100, '(native)': 7 });
    expect(Object.fromEntries(summary.byModule)).toMatchObject({ 'node_modules/postgres': 50, 'node:internal': 30 });
    expect(summary.top[0]).toEqual(['orderReady  (server/src/dispatch/dispatch.service.ts:1)', 100]);
  });
});
