#!/usr/bin/env python3
"""Pairs with openwork-server-v2 as docs/RUNTIME.md ("Pairing: the protocol") describes it,
written from that text alone, on PyPI's `spake2` package: a second implementation of the
protocol, independent of the server's Rust code, for tests/tests/remote.rs.

    python3 pair.py HOST PORT CODE DEVICE_NAME

Prints {"deviceId", "name", "token", "fingerprint"} as JSON and exits 0 once paired; exits 1
with the reason on stderr otherwise (and keeps nothing).
"""

import base64
import hashlib
import hmac
import http.client
import json
import ssl
import sys

from spake2 import SPAKE2_A

CLIENT_ID = b"openwork-pair-v1 client"
SERVER_ID_PREFIX = b"openwork-pair-v1 server "
CLIENT_CONFIRM = b"openwork-pair-v1 client confirm"
SERVER_CONFIRM = b"openwork-pair-v1 server confirm"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(conn: http.client.HTTPSConnection, path: str, body: dict):
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {"message": data.decode("utf-8", "replace")}


def fail(why: str) -> None:
    print(why, file=sys.stderr)
    sys.exit(1)


def main() -> None:
    host, port, code, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

    # Any certificate: the exchange proves the one we see here belongs to the server.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=20)
    conn.connect()
    fingerprint = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()

    password = "".join(c for c in code if not c.isspace() and c != "-").upper().encode("ascii")
    spake = SPAKE2_A(password, idA=CLIENT_ID, idB=SERVER_ID_PREFIX + fingerprint.encode("ascii"))
    msg_a = spake.start()

    status, started = post(conn, "/pair/start", {"pake": b64(msg_a)})
    if status != 201:
        fail(f"/pair/start: {status} {started}")
    msg_b = base64.b64decode(started["pake"])
    key = spake.finish(msg_b)
    confirm = hmac.new(key, CLIENT_CONFIRM + msg_a + msg_b, hashlib.sha256).digest()

    status, paired = post(
        conn,
        "/pair/finish",
        {"session": started["session"], "deviceName": name, "confirm": b64(confirm)},
    )
    if status != 201:
        fail(f"/pair/finish: {status} {paired}")
    expected = hmac.new(key, SERVER_CONFIRM + msg_a + msg_b, hashlib.sha256).digest()
    if not hmac.compare_digest(base64.b64decode(paired["confirm"]), expected):
        fail("the server's confirmation is wrong: not the server that issued the code")
    if paired["fingerprint"] != fingerprint:
        fail(f"the server names certificate {paired['fingerprint']}, but showed {fingerprint}")
    print(json.dumps({
        "deviceId": paired["deviceId"],
        "name": paired["name"],
        "token": paired["token"],
        "fingerprint": fingerprint,
    }))


if __name__ == "__main__":
    main()
