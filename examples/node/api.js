// Loads the contract from proto/ (no generated files to keep in sync) and
// returns the automation.v1 package, plus helpers every example uses.
const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const root = path.join(__dirname, "..", "..", "proto");
const files = ["auth", "users", "jobs", "api_keys"].map((f) => `automation/v1/${f}.proto`);
const definition = protoLoader.loadSync(files, {
  includeDirs: [root],
  keepCase: false, // camelCase fields, like grpcurl's JSON
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).automation.v1;

/** Call metadata carrying a bearer credential (access token or API key). */
function bearer(credential) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${credential}`);
  return metadata;
}

/** A google.protobuf.Struct (as proto-loader shapes it) as plain JSON. */
function fromStruct(struct) {
  const value = (v) => {
    switch (v && v.kind) {
      case "structValue": return fromStruct(v.structValue);
      case "listValue": return (v.listValue.values || []).map(value);
      case "stringValue": return v.stringValue;
      case "numberValue": return v.numberValue;
      case "boolValue": return v.boolValue;
      default: return null;
    }
  };
  const out = {};
  for (const [key, v] of Object.entries((struct && struct.fields) || {})) out[key] = value(v);
  return out;
}

/** Plain JSON as a google.protobuf.Value. */
function toValue(json) {
  if (json === null || json === undefined) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(json)) return { listValue: { values: json.map(toValue) } };
  switch (typeof json) {
    case "string": return { stringValue: json };
    case "number": return { numberValue: json };
    case "boolean": return { boolValue: json };
    default: return { structValue: toStruct(json) };
  }
}

/** Plain JSON object as a google.protobuf.Struct. */
function toStruct(object) {
  const fields = {};
  for (const [key, v] of Object.entries(object)) fields[key] = toValue(v);
  return { fields };
}

/**
 * Channel credentials: plaintext by default, TLS when CA_FILE names the CA
 * the server's certificate chains to, with a client certificate
 * (CLIENT_CERT_FILE, CLIENT_KEY_FILE) for a server that requires mutual TLS.
 * The API key or token is sent either way.
 */
function credentials() {
  const read = (variable) => (process.env[variable] ? fs.readFileSync(process.env[variable]) : null);
  const ca = read("CA_FILE");
  if (!ca) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(ca, read("CLIENT_KEY_FILE"), read("CLIENT_CERT_FILE"));
}

module.exports = { grpc, v1, bearer, credentials, fromStruct, toStruct, toValue };
