#!/usr/bin/env python3
"""Mint test JWTs for a wasmhive app (the README's "Securing a deployment" tour, and
`just bench edge`). Needs only python3 and the openssl command.

    python3 scripts/mint_token.py SUBJECT [ROLE...] [--scope "orders:write"] \
        [--alg RS256|ES256|EdDSA] [--keys manifests/keys] [--ttl 3600] \
        [--issuer https://id.example.com] [--audience shop]

On first use it makes a signing key of each kind (RSA 2048, EC P-256, Ed25519) in the
keys directory, the JWKS with their public halves (`jwks.json`, what a manifest's
`[auth.jwt] jwks =` points at), and an API key file (`api-keys.txt`, `NAME:KEY` lines,
for `[auth.api_keys] keys = { file = ... }`). Then it prints a signed token.

These are test keys kept on disk unencrypted: fine for a tour or a benchmark, not a
production identity provider.
"""

import argparse
import base64
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

KINDS = {
    "RS256": ("rsa.pem", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    "ES256": ("ec.pem", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    "EdDSA": ("ed25519.pem", ["genpkey", "-algorithm", "ED25519"]),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args, stdin=None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True).stdout


def public_der(key: Path) -> bytes:
    return openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")


def jwk(alg: str, key: Path) -> dict:
    kid = f"{alg.lower()}-1"
    if alg == "RS256":
        modulus = openssl("rsa", "-in", str(key), "-noout", "-modulus").decode().strip()
        n = bytes.fromhex(modulus.split("=", 1)[1])
        return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(n), "e": "AQAB"}
    if alg == "ES256":
        point = public_der(key)[-65:]  # the uncompressed point: 0x04 || x || y
        return {"kty": "EC", "kid": kid, "use": "sig", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])}
    raw = public_der(key)[-32:]
    return {"kty": "OKP", "kid": kid, "use": "sig", "crv": "Ed25519", "x": b64(raw)}


def ensure_keys(keys: Path) -> None:
    """Makes the signing keys, the JWKS and an API key file if they are missing."""
    keys.mkdir(parents=True, exist_ok=True)
    jwks = []
    for alg, (name, gen) in KINDS.items():
        path = keys / name
        if not path.exists():
            openssl(*gen, "-out", str(path))
            path.chmod(0o600)
        jwks.append(jwk(alg, path))
    (keys / "jwks.json").write_text(json.dumps({"keys": jwks}, indent=2) + "\n")
    api = keys / "api-keys.txt"
    if not api.exists():
        api.write_text(f"# NAME:KEY, one per line; the name becomes the caller's subject\n"
                       f"tour-client:{secrets.token_hex(20)}\n")
        api.chmod(0o600)


def der_ecdsa_to_raw(der: bytes, size: int = 32) -> bytes:
    """An ECDSA signature from DER (SEQUENCE of two INTEGERs) to JWS's r || s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        value = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += value.rjust(size, b"\x00")
        i += 2 + n
    return out


def mint(keys: Path, alg: str, claims: dict) -> str:
    """A signed compact JWT."""
    name, _ = KINDS[alg]
    header = {"alg": alg, "typ": "JWT", "kid": f"{alg.lower()}-1"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    key = str(keys / name)
    if alg == "RS256":
        sig = openssl("dgst", "-sha256", "-sign", key, stdin=signing_input)
    elif alg == "ES256":
        sig = der_ecdsa_to_raw(openssl("dgst", "-sha256", "-sign", key, stdin=signing_input))
    else:
        # pkeyutl -rawin reads the message from a file for Ed25519.
        msg = keys / ".signing-input"
        msg.write_bytes(signing_input)
        sig = openssl("pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", str(msg))
        msg.unlink()
    return f"{signing_input.decode()}.{b64(sig)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subject")
    p.add_argument("roles", nargs="*")
    p.add_argument("--scope", default="")
    p.add_argument("--alg", default="RS256", choices=list(KINDS))
    p.add_argument("--keys", default=str(Path(__file__).resolve().parent.parent / "manifests" / "keys"))
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--issuer", default="https://id.example.com")
    p.add_argument("--audience", default="shop")
    args = p.parse_args()
    keys = Path(args.keys)
    ensure_keys(keys)
    now = int(time.time())
    claims = {"iss": args.issuer, "aud": args.audience, "sub": args.subject, "roles": args.roles,
              "iat": now, "exp": now + args.ttl}
    if args.scope:
        claims["scope"] = args.scope
    print(mint(keys, args.alg, claims))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        sys.exit(f"openssl failed: {e.stderr.decode(errors='replace')}")
