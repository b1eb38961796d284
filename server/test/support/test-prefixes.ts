/**
 * The Redis key prefixes this test file's hubs used on the shared Redis, so that what they leave
 * behind (keys without a TTL, such as the status hash and the presence marker) can be deleted once
 * the file is done (`redis-cleanup.ts`). Every file runs in its own worker with its own copy.
 */
const used = new Set<string>();

/** URLs other than the shared Redis's own that reach it (a proxy in front of it): see `reachesSharedRedis`. */
const sharedRedisUrls = new Set<string>();

/** `url` reaches the shared Redis too: the prefixes of hubs configured with it are tidied like the others'. */
export function reachesSharedRedis(url: string): void {
  sharedRedisUrls.add(url);
}

export function isSharedRedisUrl(url: string): boolean {
  return sharedRedisUrls.has(url);
}

export function rememberTestPrefix(prefix: string): void {
  used.add(prefix);
}

/** Every prefix remembered so far; forgets them. */
export function takeTestPrefixes(): string[] {
  const all = [...used];
  used.clear();
  return all;
}
