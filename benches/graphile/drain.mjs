// graphile-worker draining N no-op jobs on the PostgreSQL that
// `cargo bench --bench jobs` just used, so that the two rates are measured
// in one run on one server. Prints one JSON line.
//
//   DATABASE_URL=postgres://… JOBS=100000 node drain.mjs batched|default
//
// "batched" is graphile-worker's fast configuration: a local queue that
// fetches and locks jobs in batches, and completions written in batches.
// "default" is its out-of-the-box configuration (each job fetched and
// completed with statements of its own).
import { Logger } from "@graphile/logger";
import { makeWorkerUtils, run } from "graphile-worker";

const connectionString = process.env.DATABASE_URL;
const jobs = Number(process.env.JOBS ?? 100000);
const mode = process.argv[2] ?? "batched";
const concurrentJobs = Number(process.env.CONCURRENCY ?? 24);
if (!connectionString) {
  console.error("DATABASE_URL is required");
  process.exit(2);
}

const worker = {
  connectionString,
  concurrentJobs,
  maxPoolSize: concurrentJobs + 1,
  pollInterval: 1000,
  ...(mode === "batched"
    ? {
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      }
    : {}),
};
// Per-job log lines would cost more than the no-op jobs themselves.
const logger = new Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});
const preset = { worker: { ...worker, logger } };

const utils = await makeWorkerUtils({ preset });
await utils.migrate();
await utils.withPgClient((client) =>
  client.query("delete from graphile_worker._private_jobs"),
);

const enqueueStarted = performance.now();
const batch = 1000;
for (let offset = 0; offset < jobs; offset += batch) {
  const specs = [];
  for (let i = offset; i < Math.min(jobs, offset + batch); i++) {
    specs.push({ identifier: "noop", payload: { n: i } });
  }
  await utils.addJobs(specs);
}
const enqueueSeconds = (performance.now() - enqueueStarted) / 1000;

let completed = 0;
let allHandled;
const handled = new Promise((resolve) => {
  allHandled = resolve;
});
const started = performance.now();
const runner = await run({
  preset,
  taskList: {
    noop: async () => {
      completed += 1;
      if (completed === jobs) allHandled();
    },
  },
});
await handled;
const handlerSeconds = (performance.now() - started) / 1000;
// Completions may still be in a batch: wait until the table is empty.
for (;;) {
  const { rows } = await utils.withPgClient((client) =>
    client.query("select count(*)::int as n from graphile_worker._private_jobs"),
  );
  if (rows[0].n === 0) break;
  await new Promise((r) => setTimeout(r, 5));
}
const settledSeconds = (performance.now() - started) / 1000;
await runner.stop();
await utils.release();
console.log(
  JSON.stringify({
    mode,
    jobs,
    concurrent_jobs: concurrentJobs,
    enqueue_seconds: enqueueSeconds,
    drain_seconds: settledSeconds,
    jobs_per_second: jobs / settledSeconds,
    handler_seconds: handlerSeconds,
  }),
);
