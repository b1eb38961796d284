// k6/encoding: std (padded), rawstd (unpadded), url, rawurl. Node's decoder takes all of them.
export function b64decode(input, _encoding = 'std', format) {
  const buffer = Buffer.from(String(input), /url/.test(_encoding) ? 'base64url' : 'base64');
  if (format === 's') return buffer.toString('utf8');
  return buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
}
export function b64encode(input, encoding = 'std') {
  const buffer = input instanceof ArrayBuffer ? Buffer.from(input) : Buffer.from(String(input));
  const text = buffer.toString(/url/.test(encoding) ? 'base64url' : 'base64');
  return encoding.startsWith('raw') ? text.replace(/=+$/, '') : text;
}
export default { b64decode, b64encode };
