/**
 * What a tracking token looks like: the column default makes 43 base64url characters; anything
 * else is refused before it reaches the database (and counted as a failed guess).
 */
export const TRACKING_TOKEN = /^[A-Za-z0-9_-]{43}$/;

export interface TrackingLinks {
  /** The customer's link for a delivery's token: `<PUBLIC_URL>/track/<token>`. */
  urlFor(token: string): string;
}

/**
 * `publicUrl` is read at each call: with `PUBLIC_URL` unset it names the port the hub listens
 * on, which is known only once it listens (PORT=0).
 */
export function createTrackingLinks(publicUrl: () => string): TrackingLinks {
  return {
    urlFor: (token) => `${publicUrl()}/track/${encodeURIComponent(token)}`,
  };
}
