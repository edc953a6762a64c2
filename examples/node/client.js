// A client: logs in, lists users, enqueues a job and watches it to the end
// (printing the worker's last progress report), then shows a refused call's
// status code and message.
//   ADDR=127.0.0.1:50051 LOGIN=admin PASSWORD=… node examples/node/client.js
// Over TLS: CA_FILE=ca.pem (and CLIENT_CERT_FILE, CLIENT_KEY_FILE for mutual
// TLS), with ADDR a name the server's certificate carries (api.js).
const { grpc, v1, bearer, credentials, fromStruct, toStruct } = require("./api");

const addr = process.env.ADDR || "127.0.0.1:50051";
const channelCredentials = credentials();
const call = (client, method, request, metadata) =>
  new Promise((resolve, reject) =>
    client[method](request, metadata || new grpc.Metadata(), (error, response) =>
      error ? reject(error) : resolve(response)));

async function main() {
  const auth = new v1.AuthService(addr, channelCredentials);
  const login = await call(auth, "login", { login: process.env.LOGIN, password: process.env.PASSWORD });
  const as = bearer(login.accessToken);

  const users = new v1.UserService(addr, channelCredentials);
  const page = await call(users, "listUsers", { pageSize: 10 }, as);
  console.log("users:", page.users.map((u) => u.username).join(", "));

  const jobs = new v1.JobService(addr, channelCredentials);
  // A W3C trace context: the server continues it in its logs, stores it with
  // the job, and hands it to the worker that runs the job.
  const random = (bytes) => require("node:crypto").randomBytes(bytes).toString("hex");
  const traceparent = process.env.TRACEPARENT || `00-${random(16)}-${random(8)}-01`;
  const traced = as.clone();
  traced.set("traceparent", traceparent);
  const { job } = await call(jobs, "createJob", {
    name: process.env.JOB_NAME || "node.echo",
    payload: toStruct({ greeting: "hello from node" }),
  }, traced);
  console.log("created:", job.id, "trace:", traceparent);
  // WatchJob: the job now, then each change; it ends when the job is finished.
  const last = await new Promise((resolve, reject) => {
    let latest = null;
    const stream = jobs.watchJob({ id: job.id }, as, { deadline: Date.now() + 60_000 });
    stream.on("data", (update) => { latest = update.job; });
    stream.on("end", () => resolve(latest));
    stream.on("error", reject);
  });
  const result = last.result && last.result.structValue ? fromStruct(last.result.structValue) : null;
  console.log("watch:", last.status, JSON.stringify(result));
  // What the worker last reported on its way (kept once the job is done).
  if (last.progress) {
    const percent = last.progress.percent == null ? "-" : `${last.progress.percent}%`;
    console.log("progress:", percent, last.progress.message);
  }

  try {
    await call(users, "createUser", { email: "not-an-email", username: "node", password: "a-long-password" }, as);
  } catch (error) {
    // error.details is the message; the status code is what to branch on
    // (with the ErrorInfo reason in grpc-status-details-bin; see docs/api.md).
    console.log("error:", grpc.status[error.code], error.details);
  }
}

main().catch((error) => { console.error(error); process.exit(1); });
