/**
 * `items` in consecutive slices of at most `size`, in order. A batch write or read goes one
 * statement or script call per slice, so neither the work of one turn nor the time Redis or
 * PostgreSQL spends on one call grows with the fleet.
 */
export function* slicesOf<T>(items: readonly T[], size: number): Generator<T[]> {
  for (let start = 0; start < items.length; start += size) yield items.slice(start, start + size);
}
