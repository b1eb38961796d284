/**
 * Region cells of the cluster layout: the map cut into squares of `degrees` of latitude and of
 * longitude, each one GEO set on the shard its hash tag names. A cell id is opaque to everything
 * but this module: the driver record stores it, the key builder wraps it in a hash tag.
 *
 * Fleets (per cell and per fleet) extend the id, not the callers: `cellIdOf(point, degrees, fleet)`
 * will append `/<fleet>` and `cellsAround` take the fleets searched; the hash tag then holds the
 * whole id, so each fleet's set of a cell may live on its own shard.
 */
export type CellId = string;

/** Metres per degree of latitude (and of longitude at the equator). */
const METRES_PER_DEGREE = 111_320;

function indexOf(value: number, degrees: number): number {
  return Math.floor(value / degrees + 1e-9);
}

/** The cell holding a point: `<row>:<column>`, rows by latitude, columns by longitude. */
export function cellIdOf(point: { lat: number; lng: number }, degrees: number): CellId {
  return `${indexOf(point.lat, degrees)}:${indexOf(point.lng, degrees)}`;
}

/** The row and column of a cell id. */
export function parseCellId(id: CellId): { row: number; column: number } {
  const [row, column] = id.split(':');
  return { row: Number(row), column: Number(column) };
}

/** The smallest distance in metres from a point to a cell's rectangle (0 inside it; flat-earth, for ordering only). */
function distanceToCell(point: { lat: number; lng: number }, row: number, column: number, degrees: number): number {
  const south = row * degrees;
  const west = column * degrees;
  const dLat = point.lat < south ? south - point.lat : point.lat > south + degrees ? point.lat - (south + degrees) : 0;
  const dLng = point.lng < west ? west - point.lng : point.lng > west + degrees ? point.lng - (west + degrees) : 0;
  const cos = Math.cos((point.lat * Math.PI) / 180);
  return Math.hypot(dLat * METRES_PER_DEGREE, dLng * METRES_PER_DEGREE * cos);
}

/**
 * Every cell a circle of `radiusMeters` around a point touches, the point's own cell first and the
 * rest outwards (nearest edge first). Longitude wraps at the antimeridian; the rows stop at the poles.
 */
export function cellsAround(point: { lat: number; lng: number }, radiusMeters: number, degrees: number): CellId[] {
  const dLat = radiusMeters / METRES_PER_DEGREE;
  const cos = Math.max(0.01, Math.cos((point.lat * Math.PI) / 180));
  const dLng = Math.min(180, radiusMeters / (METRES_PER_DEGREE * cos));
  const rows = [indexOf(Math.max(-90, point.lat - dLat), degrees), indexOf(Math.min(90, point.lat + dLat), degrees)];
  const columnsPerTurn = Math.round(360 / degrees);
  const firstColumn = indexOf(point.lng - dLng, degrees);
  const lastColumn = Math.min(indexOf(point.lng + dLng, degrees), firstColumn + columnsPerTurn - 1);
  const found: { id: CellId; distance: number }[] = [];
  const seen = new Set<string>();
  for (let row = rows[0]; row <= rows[1]; row++) {
    for (let column = firstColumn; column <= lastColumn; column++) {
      const distance = distanceToCell(point, row, column, degrees);
      if (distance > radiusMeters) continue;
      // A column past ±180° is the same cell as its wrapped twin.
      const wrapped = indexOf(((((column + 0.5) * degrees + 180) % 360) + 360) % 360 - 180, degrees);
      const id = `${row}:${wrapped}`;
      if (seen.has(id)) continue;
      seen.add(id);
      found.push({ id, distance });
    }
  }
  return found.sort((a, b) => a.distance - b.distance).map((cell) => cell.id);
}
