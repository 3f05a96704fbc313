"""``saga-orchestrator auth keypair|token``: a local key pair and tokens signed with it, to run the
``jwt`` auth mode on a laptop or in tests without an identity provider. Production tokens come from the
identity provider; these commands never talk to the service."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def keypair(out: str) -> str:
    """Write ``OUT.key`` (EC P-256, private, mode 0600) and ``OUT.pub``; say so."""
    private, public = Path(f"{out}.key"), Path(f"{out}.pub")
    if private.exists():
        raise FileExistsError(f"{private} exists; not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return f"wrote {private} (private: keep it secret) and {public} (public: auth.jwt.public_key_files)"


def token(args: argparse.Namespace) -> str:
    key = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{args.key}: not an EC private key (make one with `auth keypair`)")
    now = int(time.time())
    claims = {
        "iss": args.issuer,
        "aud": args.audience,
        "sub": args.subject,
        "tenant": args.tenant,
        "roles": [r.strip() for r in args.roles.split(",") if r.strip()],
        "iat": now,
        "exp": now + int(args.expires_in_s),
    }
    return jwt.encode(claims, key, algorithm="ES256")
