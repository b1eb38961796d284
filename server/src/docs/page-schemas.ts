import { z } from 'zod';
import { healthReply } from '#shared/replies.js';

/** `GET /` for JSON clients: what this is and where everything is. */
export const frontDoorIndex = z.object({
  name: z.string(),
  description: z.string(),
  version: z.string(),
  health: healthReply,
  links: z.object({
    map: z.string(),
    apiReference: z.string(),
    socketEvents: z.string(),
    openapi: z.string(),
    asyncapi: z.string(),
    health: z.string(),
    metrics: z.string(),
    guides: z.array(z.object({ title: z.string(), href: z.string() })),
  }),
});
export type FrontDoorIndex = z.infer<typeof frontDoorIndex>;

/** `GET /map/config.json`: what the map page needs to draw (see realtime/map.routes.ts). */
export const mapConfigReply = z.object({
  tileUrl: z.string(),
  tileAttribution: z.string(),
  /** Where the credit links to (http or https only; omitted otherwise). */
  tileAttributionUrl: z.string().optional(),
  staleAfterMs: z.number(),
  staleCheckMs: z.number(),
  /** The hub's clock, so "last ping 30 s ago" is judged against it, not the browser's. */
  serverTime: z.number(),
});

/** A JSON document whose shape has its own specification (OpenAPI, AsyncAPI). */
export const jsonDocument = z.record(z.string(), z.unknown());

/** `GET /docs/guides/:name`: a file name in docs/, nothing that could leave the folder. */
export const guideName = z.string().regex(/^[a-z0-9][a-z0-9-]*\.md$/);
