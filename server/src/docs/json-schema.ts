import { z } from 'zod';

export type JsonSchema = Record<string, unknown>;

/** Named schemas as the `components` of an OpenAPI or AsyncAPI document. */
export interface SchemaCatalogue {
  /** `{ $ref }` to a named schema, or the schema inline when it has no name. */
  ref(schema: z.ZodType, io: 'input' | 'output'): JsonSchema;
  /** Every named schema, for `components.schemas`. */
  components(): Record<string, JsonSchema>;
}

/**
 * JSON Schema from the zod schemas the hub validates with (zod 4's own `z.toJSONSchema`, draft
 * 2020-12, which OpenAPI 3.1 and AsyncAPI 3 take as is). A schema given a name here becomes a
 * component that others point at with `$ref`; requests are described as accepted (`io: 'input'`:
 * defaults optional, coercions as sent) and replies as sent (`io: 'output'`).
 */
export function createSchemaCatalogue(
  named: Record<string, z.ZodType>,
  refBase: string,
  target: 'draft-2020-12' | 'draft-07' = 'draft-2020-12',
): SchemaCatalogue {
  const registry = z.registry<{ id: string }>();
  for (const [id, schema] of Object.entries(named)) registry.add(schema, { id });
  const uri = (id: string) => `${refBase}${id}`;
  const converted = {
    input: z.toJSONSchema(registry, { io: 'input', uri, target }).schemas as Record<string, JsonSchema>,
    output: z.toJSONSchema(registry, { io: 'output', uri, target }).schemas as Record<string, JsonSchema>,
  };
  const used = new Map<string, { io: 'input' | 'output'; schema: JsonSchema }>();

  const bare = (schema: JsonSchema): JsonSchema => {
    // Per-schema `$schema` and `$id` make sense for a standalone file, not inside a document.
    const { $schema: _schema, $id: _id, ...rest } = schema;
    return rest;
  };

  return {
    ref(schema, io) {
      const id = registry.get(schema)?.id;
      if (id === undefined) {
        // Unnamed (query parameters, one-off shapes): inline, named parts included.
        return bare(z.toJSONSchema(schema, { io, metadata: z.registry(), target }) as JsonSchema);
      }
      const json = bare(converted[io][id]);
      const seen = used.get(id);
      if (seen && seen.io !== io && JSON.stringify(seen.schema) !== JSON.stringify(json)) {
        throw new Error(`schema ${id} differs as input and as output: give each its own name`);
      }
      used.set(id, { io, schema: json });
      return { $ref: uri(id) };
    },
    components() {
      // Named schemas reached only through other named ones are emitted too (as output unless seen).
      const all: Record<string, JsonSchema> = {};
      for (const id of Object.keys(named)) all[id] = used.get(id)?.schema ?? bare(converted.output[id]);
      return all;
    },
  };
}
