import { Writable } from 'node:stream';

/** Everything a hub logs, kept in memory for tests that read the logs. */
export function logSink() {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return {
    stream,
    text: () => chunks.join(''),
    lines: (): Record<string, any>[] =>
      chunks
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
  };
}

export type LogSink = ReturnType<typeof logSink>;
