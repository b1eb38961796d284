import { execFile, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { api, createTestDatabase, type TestDatabase, type TestHub, startTestHub, testConfig } from './support/hub.js';

const RULES = 'deploy/prometheus/alerts.yml';
const DASHBOARD = 'deploy/grafana/dashboards/dispatch-hub.json';
const hasPromtool = spawnSync('promtool', ['--version']).status === 0;
if (!hasPromtool) console.warn('promtool not installed (apt-get install prometheus): alert rules are only parsed, not loaded');

/** Series Prometheus makes up itself rather than scraping. */
const SYNTHETIC = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan', 'le']);

/** The metric names a PromQL expression reads (functions, keywords, labels and strings left out). */
export function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // strings
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '') // label lists
    .replace(/\[[^\]]*\]/g, '') // ranges
    .replace(/\boffset\s+\S+/g, '') // offsets
    .replace(/\b\d[\w.]*/g, '') // numbers and durations
    .replace(/\$\w+/g, ''); // Grafana variables
  const names = new Set<string>();
  for (const match of bare.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const name = match[0];
    const next = bare.slice(match.index! + name.length).trimStart();
    if (next.startsWith('(') || KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return [...names];
}

/** Every sample name a /metrics text can contain, histogram and summary parts included. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const match of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = match;
    names.add(name);
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${name}${suffix}`);
    if (type === 'summary') for (const suffix of ['_sum', '_count']) names.add(`${name}${suffix}`);
  }
  return names;
}

describe('monitoring: Prometheus alert rules and the Grafana dashboard', () => {
  let db: TestDatabase;
  let hub: TestHub;
  let exposed: Set<string>;

  beforeAll(async () => {
    db = await createTestDatabase();
    hub = await startTestHub(testConfig(db));
    exposed = exposedNames(await (await fetch(`${hub.url}/metrics`)).text());
  });
  afterAll(async () => {
    await hub?.stop();
    await db?.drop();
  });

  it('when the metric names of an expression are read, then functions, labels and variables are left out', () => {
    expect(metricNames('histogram_quantile(0.99, sum by (le, node) (rate(hub_assignment_seconds_bucket{node=~"$node"}[$__rate_interval]))) > 0.25').sort()).toEqual([
      'hub_assignment_seconds_bucket',
    ]);
    expect(metricNames('max(a_b) / on(node) group_left c:d offset 5m').sort()).toEqual(['a_b', 'c:d']);
  });

  it('when a real hub is scraped, then every metric the alert rules use exists in its /metrics', () => {
    const rules = parse(readFileSync(RULES, 'utf8')) as { groups: { name: string; rules: { alert: string; expr: string; for?: string }[] }[] };
    const used = rules.groups.flatMap((g) => g.rules.flatMap((r) => metricNames(r.expr).map((name) => ({ alert: r.alert, name }))));
    expect(used.length).toBeGreaterThan(5);
    const missing = used.filter(({ name }) => !exposed.has(name) && !SYNTHETIC.has(name));
    expect(missing).toEqual([]);
    for (const group of rules.groups) for (const rule of group.rules) expect(rule.alert, JSON.stringify(rule)).toMatch(/^[A-Z][A-Za-z]+$/);
  });

  it('when the dashboard is read, then every panel query uses only metrics a hub exposes', () => {
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: { type: string; title: string; targets?: { expr: string }[] }[] };
    const queries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
    expect(queries.length).toBeGreaterThan(10);
    const missing = queries.flatMap((q) => metricNames(q.expr).filter((name) => !exposed.has(name)).map((name) => ({ panel: q.panel, name })));
    expect(missing).toEqual([]);
  });

  it('when /metrics is scraped, then the shared-state gauges answer from PostgreSQL and the breaker', async () => {
    const text = await (await fetch(`${hub.url}/metrics`)).text();
    expect(text).toMatch(/^hub_deliveries_pending\{node="[^"]+"\} 0$/m);
    expect(text).toMatch(/^hub_outbox_pending\{node="[^"]+"\} 0$/m);
    expect(text).toMatch(/^hub_outbox_oldest_pending_seconds\{node="[^"]+"\} 0$/m);
    expect(text).toMatch(/^hub_redis_breaker_open\{node="[^"]+"\} 0$/m);
  });

  it('when requests are answered, then hub_http_request_seconds counts each by route pattern, method and status, never by path', async () => {
    const id = randomUUID();
    expect((await api(hub, 'GET', `/admin/deliveries/${id}`)).status).toBe(404);
    expect((await api(hub, 'GET', `/admin/deliveries/${randomUUID()}`)).status).toBe(404);
    expect((await api(hub, 'GET', '/admin/deliveries', undefined, null)).status).toBe(401);
    const text = await (await fetch(`${hub.url}/metrics`)).text();
    const count = (labels: string) => text.split('\n').find((l) => l.startsWith('hub_http_request_seconds_count{') && l.includes(labels));
    expect(count('route="/admin/deliveries/:id",method="GET",status="404"')).toMatch(/ 2$/);
    expect(count('route="/admin/deliveries",method="GET",status="401"')).toMatch(/ 1$/);
    expect(text).not.toContain(id);
  });

  it.skipIf(!hasPromtool)('when promtool loads the rules and the Prometheus config, then both are valid', async () => {
    const run = promisify(execFile);
    const rules = await run('promtool', ['check', 'rules', RULES]);
    expect(rules.stdout).toMatch(/SUCCESS: 10 rules found/);
    // The config names alerts.yml relative to itself.
    const config = await run('promtool', ['check', 'config', 'prometheus.yml'], { cwd: 'deploy/prometheus' });
    expect(config.stdout).toMatch(/is valid prometheus config file syntax/);
  });
});
