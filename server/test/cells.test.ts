import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/platform/config.js';
import { cellIdOf, cellsAround, parseCellId } from '../src/presence/cells.js';
import { clusterPresenceKeys, DRIVER_BUCKETS } from '../src/presence/presence-cluster.store.js';

const generate = () => 'k'.repeat(8) + 'abcdefghijklmnopqrstuvwxyz0123456789';

describe('region cells and the cluster layout configuration', () => {
  it('when a point lies in a cell, then its id names the row and column, and the search starts with that cell', () => {
    expect(cellIdOf({ lat: 52.52, lng: 13.405 }, 0.25)).toBe('210:53');
    expect(cellIdOf({ lat: -0.1, lng: -0.1 }, 0.25)).toBe('-1:-1');
    expect(parseCellId('210:53')).toEqual({ row: 210, column: 53 });
    const around = cellsAround({ lat: 52.52, lng: 13.405 }, 1000, 0.25);
    expect(around[0]).toBe('210:53');
  });

  it('when a circle crosses a border or a corner, then every cell it touches is searched, nearest first', () => {
    const corner = { lat: 52.5001, lng: 13.5001 };
    const cells = cellsAround(corner, 1000, 0.25);
    expect(cells[0]).toBe(cellIdOf(corner, 0.25));
    expect(new Set(cells)).toEqual(new Set(['210:54', '209:54', '210:53', '209:53']));
    // Far from any border, one cell.
    expect(cellsAround({ lat: 52.625, lng: 13.625 }, 1000, 0.25)).toEqual(['210:54']);
  });

  it('when a circle crosses the antimeridian, then the cells on the other side are searched, each once', () => {
    const cells = cellsAround({ lat: 10, lng: 179.999 }, 2000, 0.25);
    expect(cells).toContain(cellIdOf({ lat: 10, lng: 179.999 }, 0.25));
    expect(cells).toContain(cellIdOf({ lat: 10, lng: -179.999 }, 0.25));
    expect(new Set(cells).size).toBe(cells.length);
  });

  it('when keys are built, then every key of a cell shares its hash tag and every key of a driver its bucket', () => {
    const keys = clusterPresenceKeys('hub:');
    expect(keys.cellGeo('210:53')).toBe('hub:{c:210:53}:geo');
    expect(keys.cellVersions('210:53')).toBe('hub:{c:210:53}:ver');
    expect(keys.cellOfGeoKey(keys.cellGeo('-1:-7'))).toBe('-1:-7');
    const b = keys.bucketOf('driver-1');
    expect(b).toBeGreaterThanOrEqual(0);
    expect(b).toBeLessThan(DRIVER_BUCKETS);
    expect(keys.online('driver-1')).toBe(`hub:{d:${b}}:online:driver-1`);
    expect(keys.status(b)).toBe(`hub:{d:${b}}:status`);
  });

  it('when REDIS_CLUSTER_NODES is set, then it is parsed as seeds; with REDIS_URL too, or a prefix with braces, the config is refused', () => {
    const config = parseConfig({ REDIS_CLUSTER_NODES: '10.0.0.1:7000, redis://10.0.0.2:7001', REDIS_CELL_DEGREES: '0.1' }, generate);
    expect(config.REDIS_CLUSTER_NODES).toEqual([
      { host: '10.0.0.1', port: 7000 },
      { host: '10.0.0.2', port: 7001 },
    ]);
    expect(config.REDIS_CELL_DEGREES).toBe(0.1);
    expect(parseConfig({}, generate).REDIS_CELL_DEGREES).toBe(0.25);
    expect(() => parseConfig({ REDIS_CLUSTER_NODES: '10.0.0.1:7000', REDIS_URL: 'redis://x:6379' }, generate)).toThrow(ConfigError);
    expect(() => parseConfig({ REDIS_CLUSTER_NODES: '10.0.0.1:7000', REDIS_PREFIX: '{x}' }, generate)).toThrow(ConfigError);
    expect(() => parseConfig({ REDIS_CLUSTER_NODES: 'nohost' }, generate)).toThrow(ConfigError);
    expect(() => parseConfig({ REDIS_CELL_DEGREES: '0' }, generate)).toThrow(ConfigError);
  });
});
