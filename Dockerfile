# The dispatch hub: one process per container (run several behind a load balancer, see
# docker-compose.yml and docs/deployment.md). Three stages: compile the TypeScript, install the
# production dependencies alone, and a runtime image holding only those two results.

# Node 24, the LTS line: Node 20 left upstream support in April 2026. The test suite and the
# benchmarks pass on both (docs/performance.md, thirteenth pass); `engines` still allows 20 for
# running from a checkout. One argument, so the three stages never differ.
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: full install (typescript), compile server/ and shared/ to dist/ ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Everything, for the build (the vendure-plugin/ workspace is not copied: npm skips it, and the
# Vendure server its tests start stays out of every stage).
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY shared/ shared/
COPY server/ server/
COPY migrations/ migrations/
# dist/server/src (JavaScript), dist/shared/src, and beside them what the code reads at run time:
# dist/server/public (the map and docs pages) and dist/migrations.
RUN npm run build

# ---- deps: production dependencies only (no typescript, tsx, vitest, eslint, drizzle-kit) ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE}
WORKDIR /app
ENV NODE_ENV=production \
    PORT=3000 \
    HOST=0.0.0.0
COPY --from=deps /app/node_modules/ node_modules/
# package.json names the app (the docs pages read its name and version from it).
COPY package.json ./
COPY --from=build /app/dist/ dist/
# The guides, served at /docs/guides/<name>.md and linked from the front door.
COPY docs/ docs/

# The embedded database (used only when DATABASE_URL is unset) lives under DATA_DIR=./data.
RUN mkdir -p /app/data && chown node:node /app/data
USER node
EXPOSE 3000

# 200 while PostgreSQL is up (also when Redis is down: "degraded" still serves), 503 when it is not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/health', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The compiled hub run by node itself: SIGTERM from `docker stop` reaches the hub (graceful
# shutdown) with no npm or shell in between. Migrations: `node dist/server/src/platform/migrate-cli.js`
# (the compose `migrate` job); several processes in one container: `node dist/server/src/cluster.js`.
# --max-semi-space-size=32: a young generation big enough for the garbage of hundreds of requests
# in flight, small enough that no scavenge stalls the loop long (docs/performance.md, sixth pass).
# --initial-old-space-size=256: the old generation's limit starts at 256 MB, so a node taking over
# a failed node's drivers is not marked and compacted again and again while its heap grows
# (docs/deployment.md; docs/performance.md, fifteenth pass).
CMD ["node", "--max-semi-space-size=32", "--initial-old-space-size=256", "dist/server/src/main.js"]
