import { BlockList, isIP } from 'node:net';

/**
 * Who a request comes from, for per-address limits. The peer address, unless the peer is one of
 * `TRUSTED_PROXIES` (nginx, a load balancer): then the nearest address in X-Forwarded-For that is
 * not itself a trusted proxy. A header from anyone else is ignored, so a client cannot pick its
 * own address.
 *
 * IPv6 clients are counted per /64: one subscriber usually holds a whole /64, and counting single
 * addresses would give an attacker 2^64 fresh budgets.
 */
export type ClientAddressOf = (peer: string | undefined, forwardedFor: string | string[] | undefined) => string;

/** `::ffff:1.2.3.4` is the IPv4 client 1.2.3.4 on a dual-stack socket. */
function unmapped(address: string): string {
  const trimmed = address.trim();
  return /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(trimmed) ? trimmed.slice(7) : trimmed;
}

/** The /64 an IPv6 address belongs to, in one spelling whatever the input's. */
function ipv6Prefix(address: string): string {
  const [head, tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups = address.includes('::') ? [...left, ...Array(8 - left.length - right.length).fill('0'), ...right] : left;
  return `${groups
    .slice(0, 4)
    .map((g) => (parseInt(g, 16) || 0).toString(16))
    .join(':')}::/64`;
}

/** The key a client address is counted under. */
export function addressKey(address: string): string {
  const plain = unmapped(address).replace(/%.*$/, '');
  const family = isIP(plain);
  if (family === 6) return ipv6Prefix(plain.toLowerCase());
  return family === 4 ? plain : 'unknown';
}

/** Parses `TRUSTED_PROXIES`: addresses and CIDR ranges, IPv4 or IPv6. */
export function trustedProxyList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address, bits] = entry.split('/');
    const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(address, family);
    else list.addSubnet(address, Number(bits), family);
  }
  return list;
}

export function createClientAddress(trustedProxies: readonly string[]): ClientAddressOf {
  const trusted = trustedProxyList(trustedProxies);
  const isTrusted = (address: string) => {
    const family = isIP(address);
    return family !== 0 && trusted.check(address, family === 6 ? 'ipv6' : 'ipv4');
  };
  return (peer, forwardedFor) => {
    let client = unmapped(peer ?? '');
    if (trustedProxies.length > 0 && isTrusted(client) && forwardedFor) {
      const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',').map(unmapped).filter(Boolean);
      // Right to left: each trusted proxy vouches for the hop before it; the first other one is the client.
      for (let i = hops.length - 1; i >= 0; i--) {
        if (isIP(hops[i]) === 0) break;
        client = hops[i];
        if (!isTrusted(client)) break;
      }
    }
    return addressKey(client);
  };
}
