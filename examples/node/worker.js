// A worker on the Work stream: hello → welcome → credits (CREDITS more
// slots, optional) → assignments (up to CONCURRENCY + CREDITS at once) →
// heartbeats → progress (not acknowledged) → a completion or failure per job, each
// acknowledged → cancellation stops a job → SIGINT/SIGTERM drains (nothing
// new, finish what it holds, leave). A lost stream is reconnected to with
// exponential backoff and jitter; a refused credential stops the worker.
//   ADDR=127.0.0.1:50051 API_KEY=acp_… JOB_NAMES=node.echo node examples/node/worker.js
// MAX_JOBS (optional): drain and leave after that many jobs.
// Over TLS: CA_FILE=ca.pem (and CLIENT_CERT_FILE, CLIENT_KEY_FILE for mutual
// TLS), with ADDR a name the server's certificate carries (api.js).
const os = require("node:os");
const { grpc, v1, bearer, credentials, fromStruct, toStruct, toValue } = require("./api");

const addr = process.env.ADDR || "127.0.0.1:50051";
const jobNames = (process.env.JOB_NAMES || "").split(",").filter(Boolean);
const concurrency = Number(process.env.CONCURRENCY || 4);
const maxJobs = Number(process.env.MAX_JOBS || 0);
// Extra slots granted after the welcome (capacity grows on an open stream).
const credits = Number(process.env.CREDITS || 0);
const FATAL = [grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED, grpc.status.INVALID_ARGUMENT];

let stopping = false;
let done = 0;

/**
 * The work itself: echo the payload (fail for good when asked to), reporting
 * progress on the way (GetJob and WatchJob show the latest).
 */
async function handle(job, signal, progress) {
  const payload = fromStruct(job.payload);
  if (payload.fail) throw Object.assign(new Error("asked to fail"), { permanent: true });
  progress(0, "waiting", { seconds: payload.seconds || 0 });
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, 1000 * (payload.seconds || 0));
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); });
  });
  progress(100, "echoed");
  return { echo: payload, worker: "node" };
}

function session(client) {
  return new Promise((resolve, reject) => {
    const stream = client.work(bearer(process.env.API_KEY));
    const running = new Map(); // job id -> { attempt, controller }
    let unacked = 0;
    let heartbeat = null;
    let draining = false;
    const finishIfDrained = () => {
      if (draining && running.size === 0 && unacked === 0) stream.end();
    };
    const drain = () => {
      if (draining) return;
      draining = true;
      stream.write({ drain: {} });
      finishIfDrained();
    };
    const onStop = () => { stopping = true; drain(); };
    process.once("SIGINT", onStop);
    process.once("SIGTERM", onStop);
    stream.write({ hello: { workerId: `node-${os.hostname()}-${process.pid}`, jobNames, maxConcurrency: concurrency } });
    stream.on("data", (message) => {
      if (message.welcome) {
        const every = Number(message.welcome.heartbeatInterval.seconds) * 1000 || 10_000;
        heartbeat = setInterval(() => { if (running.size) stream.write({ heartbeat: {} }); }, every);
        console.log("welcome:", message.welcome.sessionId);
        if (credits) stream.write({ credit: { credits } });
      } else if (message.assignment) {
        const { job, attempt } = message.assignment;
        const previous = running.get(job.id);
        if (previous) previous.controller.abort();
        const controller = new AbortController();
        const current = { attempt, controller };
        running.set(job.id, current);
        // The trace context of the call that created the job, to continue in
        // this worker's own spans and logs.
        const trace = message.assignment.traceparent;
        console.log(`running ${job.name} ${job.id} (attempt ${attempt})${trace ? ` trace ${trace}` : ""}`);
        const lease = { jobId: job.id, attempt };
        // Best effort and not acknowledged; the server keeps the latest
        // (stored at most once a second, the last one with the result). A
        // real worker sends a few a second at most: they count toward the
        // stream's inbound budget.
        const progress = (percent, text, details) => {
          if (running.get(job.id) !== current) return;
          stream.write({ progress: { lease, percent, message: text.slice(0, 1024), details: details && toStruct(details) } });
        };
        handle(job, controller.signal, progress).then(
          (result) => ({ completion: { lease, result: toValue(result) } }),
          (error) => ({ failure: { lease, message: String(error.message || error), permanent: Boolean(error.permanent) } }),
        ).then((report) => {
          const current = running.get(job.id);
          if (!current || current.attempt !== attempt) return; // superseded
          running.delete(job.id);
          if (controller.signal.aborted) return finishIfDrained(); // the lease is gone
          unacked += 1;
          stream.write(report);
          done += 1;
          if (maxJobs && done >= maxJobs) { stopping = true; drain(); }
        });
      } else if (message.cancellation) {
        const { jobId, attempt } = message.cancellation.lease;
        const held = running.get(jobId);
        if (held && held.attempt === attempt) held.controller.abort();
      } else if (message.ack) {
        unacked -= 1;
        if (!message.ack.accepted) console.error("report refused:", message.ack.reason);
        finishIfDrained();
      } else if (message.drain) {
        console.log("the server is draining");
      }
    });
    const cleanup = () => {
      clearInterval(heartbeat);
      process.removeListener("SIGINT", onStop);
      process.removeListener("SIGTERM", onStop);
      for (const { controller } of running.values()) controller.abort();
    };
    stream.on("end", () => { cleanup(); resolve(); });
    stream.on("error", (error) => { cleanup(); reject(error); });
  });
}

async function main() {
  const client = new v1.JobService(addr, credentials());
  let failures = 0;
  while (!stopping) {
    const started = Date.now();
    try {
      await session(client);
      if (stopping) break;
    } catch (error) {
      if (FATAL.includes(error.code)) {
        console.error("refused:", grpc.status[error.code], error.details);
        process.exit(1);
      }
      if (stopping) break;
    }
    if (Date.now() - started > 30_000) failures = 0;
    const delay = Math.min(30_000, 200 * 2 ** Math.min(failures, 8)) * (0.5 + Math.random());
    failures += 1;
    console.error(`stream ended; reconnecting in ${Math.round(delay)} ms`);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
  client.close();
}

main();
