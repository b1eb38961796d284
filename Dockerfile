# The dispatch hub: one process per container (run several behind a load balancer, see
# docker-compose.yml and docs/deployment.md).
FROM node:20-bookworm-slim

WORKDIR /app

# Dependencies first, so a source change does not reinstall them. tsx runs the TypeScript sources
# directly. Production dependencies only: everything the hub, `npm run migrate` and the benchmark
# harness run on (tsx, socket.io-client for the /map page and the harness) is one. The dev
# dependencies are the test and build tools and the Vendure server the plugin's tests start
# (about 130 MB); the vendure-plugin/ workspace is not copied, so npm skips it.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --omit=dev && npm cache clean --force

COPY tsconfig.json ./
COPY shared/ shared/
COPY migrations/ migrations/
COPY server/ server/
COPY load-tests/ load-tests/

# The embedded database (used only when DATABASE_URL is unset) lives under DATA_DIR=./data.
RUN mkdir -p /app/data && chown node:node /app/data

ENV NODE_ENV=production \
    PORT=3000 \
    HOST=0.0.0.0
USER node
EXPOSE 3000

# 200 while PostgreSQL is up (also when Redis is down: "degraded" still serves), 503 when it is not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/health', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# `npm start` is `tsx server/src/main.ts`; this is the same program run as a single node process,
# so SIGTERM from `docker stop` reaches the hub itself (graceful shutdown) instead of npm and a
# shell in between, and there is no extra npm/tsx parent process per container.
CMD ["node", "--import", "tsx", "server/src/main.ts"]
