/**
 * The Redis key prefixes this test file's hubs used on the shared Redis, so that what they leave
 * behind (keys without a TTL, such as the status hash and the presence marker) can be deleted once
 * the file is done (`redis-cleanup.ts`). Every file runs in its own worker with its own copy.
 */
const used = new Map<string, Set<string>>();

export function rememberTestPrefix(redisUrl: string, prefix: string): void {
  let prefixes = used.get(redisUrl);
  if (!prefixes) used.set(redisUrl, (prefixes = new Set()));
  prefixes.add(prefix);
}

/** Every prefix remembered so far, by Redis URL; forgets them. */
export function takeTestPrefixes(): [string, string[]][] {
  const all = [...used].map(([url, prefixes]): [string, string[]] => [url, [...prefixes]]);
  used.clear();
  return all;
}
