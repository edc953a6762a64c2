"""The channel every example opens: plaintext by default, TLS when CA_FILE
names the CA that the server's certificate chains to, with a client
certificate (CLIENT_CERT_FILE, CLIENT_KEY_FILE) for a server that requires
mutual TLS. The API key or token is sent either way."""

import os

import grpc


def _read(variable):
    path = os.environ.get(variable)
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def open_channel(addr: str) -> grpc.Channel:
    ca = _read("CA_FILE")
    if ca is None:
        return grpc.insecure_channel(addr)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=_read("CLIENT_KEY_FILE"),
        certificate_chain=_read("CLIENT_CERT_FILE"),
    )
    return grpc.secure_channel(addr, credentials)
