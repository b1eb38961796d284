import type { IncomingMessage, ServerResponse } from 'node:http';
import { MAX_STATUS_BODY_BYTES } from './constants.js';

export interface RequestWithRawBody extends IncomingMessage {
  rawBody?: Buffer;
}

/**
 * Keeps the status route's body as the bytes that were signed. Registered before Vendure's JSON
 * parser runs (`beforeListen`), and it reads the whole stream, so that parser leaves the request alone.
 */
export function rawBodyMiddleware(req: RequestWithRawBody, res: ServerResponse, next: (err?: unknown) => void): void {
  if (req.method !== 'POST') return next();
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > MAX_STATUS_BODY_BYTES) return tooLarge(res);
  const chunks: Buffer[] = [];
  let size = 0;
  let done = false;
  req.on('data', (chunk: Buffer) => {
    if (done) return;
    size += chunk.length;
    if (size > MAX_STATUS_BODY_BYTES) {
      done = true;
      tooLarge(res);
      req.resume();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (done) return;
    done = true;
    req.rawBody = Buffer.concat(chunks);
    next();
  });
  req.on('error', (err) => {
    if (done) return;
    done = true;
    next(err);
  });
}

function tooLarge(res: ServerResponse): void {
  res.statusCode = 413;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ error: { code: 'PAYLOAD_TOO_LARGE', message: `status events are at most ${MAX_STATUS_BODY_BYTES} bytes` } }));
}
