import { createHash, createHmac, randomBytes as nodeRandomBytes } from 'node:crypto';

const bytes = (value) => (value instanceof ArrayBuffer ? Buffer.from(value) : ArrayBuffer.isView(value) ? Buffer.from(value.buffer, value.byteOffset, value.byteLength) : Buffer.from(String(value)));
const out = (buffer, encoding) => (encoding === 'binary' ? buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength) : buffer.toString(encoding === 'base64rawurl' ? 'base64url' : encoding));

export function hmac(algorithm, key, data, encoding) {
  return out(createHmac(algorithm, bytes(key)).update(bytes(data)).digest(), encoding);
}
export function sha256(data, encoding) {
  return out(createHash('sha256').update(bytes(data)).digest(), encoding);
}
export function randomBytes(n) {
  const b = nodeRandomBytes(n);
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}
export default { hmac, sha256, randomBytes };
