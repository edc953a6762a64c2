# Sourced by every script beside it: which server, which grpcurl, how to
# reach it, and `call` for one RPC.
#   ADDR      host:port of the gRPC port (127.0.0.1:50051)
#   GRPCURL   the grpcurl binary (grpcurl on the PATH)
#   CA_FILE   speak TLS, trusting this CA (grpcurl -cacert); ADDR must then
#             be a name the server's certificate carries. CLIENT_CERT_FILE
#             and CLIENT_KEY_FILE add a client certificate (mutual TLS).
#   TOKEN     the caller's access token (login.sh) or API key, when set.
ADDR=${ADDR:-127.0.0.1:50051}
GRPCURL=${GRPCURL:-grpcurl}
tls=(-plaintext)
if [ -n "${CA_FILE:-}" ]; then
  tls=(-cacert "$CA_FILE")
  if [ -n "${CLIENT_CERT_FILE:-}" ]; then tls+=(-cert "$CLIENT_CERT_FILE" -key "$CLIENT_KEY_FILE"); fi
fi
auth=()
if [ -n "${TOKEN:-}" ]; then auth=(-H "authorization: Bearer $TOKEN"); fi

# call Service/Method [JSON]: the request is JSON, read from standard input
# when not given; the answer is printed as JSON.
call() { "$GRPCURL" "${tls[@]}" "${auth[@]}" -d "${2:-@}" "$ADDR" "automation.v1.$1"; }
