"""What makes an export a release a user can check instead of trust: ``SHA256SUMS`` of every
file in it, signed with GnuPG (detached, armoured: ``SHA256SUMS.asc``) when a key is
configured, and :func:`verify_release`, which names each file that fails.

The key: the recipe's ``signing.key`` or ``$XENFORGE_SIGNING_KEY`` (a key id or
fingerprint in the GnuPG home, ``$GNUPGHOME`` or ``~/.gnupg``); its passphrase, if any,
from ``$XENFORGE_SIGNING_PASSPHRASE``, handed to gpg on a pipe (never on a command line,
never logged).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from xenforge.core import run as runner
from xenforge.core.errors import InputError, XenforgeError
from xenforge.core.hashing import sha256_file
from xenforge.core.paths import path_kind

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.asc"
KEY_VAR = "XENFORGE_SIGNING_KEY"
PASSPHRASE_VAR = "XENFORGE_SIGNING_PASSPHRASE"
#: where `xenforge test` writes its JUnit XML into an export, after the release was made
RESULTS = "test-results/"


def signing_key(recipe_key: str | None) -> str | None:
    """The key to sign with: ``$XENFORGE_SIGNING_KEY`` wins over the recipe's."""
    key = os.environ.get(KEY_VAR) or recipe_key
    if key is not None and (not key.strip() or any(c in key for c in "\n\r\0")):
        raise InputError(f"signing key {key!r} is not a key id",
                         hint=f"set {KEY_VAR} or the recipe's signing.key to a key id or "
                         "fingerprint of your GnuPG keyring")
    return key


def check_key(key: str | None) -> str | None:
    """``key`` if GnuPG has its secret key (so a build is not signed in vain at the end)."""
    if key is None:
        return None
    res = runner.run(["gpg", "--batch", "--list-secret-keys", key], check=False,
                     capture=True, inherit_env=True)
    if res.returncode != 0:
        raise InputError(f"no secret key {key!r} in the GnuPG keyring",
                         hint=f"import it (gpg --import) or fix {KEY_VAR} / the recipe's "
                         "signing.key; GNUPGHOME selects another keyring")
    return key


def write_sums(folder: Path, known: dict[str, str] | None = None) -> Path:
    """``SHA256SUMS`` of every file below ``folder`` (sorted; the list and its signature
    are not in it). ``known``: digests already computed, by relative path."""
    known = known or {}
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (SUMS, SIGNATURE):
            continue
        lines.append(f"{known.get(rel) or sha256_file(path)}  {rel}\n")
    dest = folder / SUMS
    dest.write_text("".join(lines))
    return dest


def reseal(folder: Path, key: str | None, *, log: Path | None = None) -> None:
    """``SHA256SUMS`` (and its signature) again, after files were added to an export (the
    suites' results of ``build --test``); the artifacts' digests come from its manifest."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        known = {a["path"]: a["sha256"] for a in manifest.get("artifacts", [])}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    write_sums(folder, known=known)
    (folder / SIGNATURE).unlink(missing_ok=True)
    if key:
        sign(folder, key, log=log)


def sign(folder: Path, key: str, *, log: Path | None = None) -> Path:
    """Sign ``folder/SHA256SUMS`` with ``key`` (detached, armoured)."""
    passphrase = os.environ.get(PASSPHRASE_VAR)
    argv: list[str | Path] = ["gpg", "--batch", "--yes", "--armor", "--detach-sign",
                              "--local-user", key, "--output", folder / SIGNATURE]
    if passphrase is not None:
        argv += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
    res = runner.run([*argv, folder / SUMS], check=False, log=log, inherit_env=True,
                     capture=True, stdin_data=(passphrase + "\n").encode() if passphrase is not None
                     else None)
    if res.returncode != 0:
        raise XenforgeError(f"gpg could not sign {folder / SUMS} with key {key}",
                            hint=f"check that the key is in your keyring (gpg -K {key}) "
                            f"and its passphrase is in {PASSPHRASE_VAR}; gpg said: "
                            f"{(res.stderr.strip().splitlines() or ['nothing'])[-1]}")
    return folder / SIGNATURE


@dataclass
class Verdict:
    folder: Path
    checked: int = 0
    problems: list[str] = field(default_factory=list)  # "FILE: what is wrong"
    signed_by: str | None = None  # the signature's key, when it verified
    unsealed: list[str] = field(default_factory=list)  # test results added after sealing

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_release(folder: Path, *, keyring: Path | None = None,
                   require_signature: bool = False) -> Verdict:
    """Check ``folder``: the signature of ``SHA256SUMS`` (when there is one; with
    ``keyring``, against that keyring only), every file it lists, and no file it does not
    list."""
    verdict = Verdict(folder)
    sums = folder / SUMS
    if keyring is not None and path_kind(keyring) != "file":  # (never raises: a long name)
        raise InputError(f"keyring {keyring} is not a file",
                         hint="export the signer's key: gpg --export KEY > signer.pub")
    if path_kind(folder) != "dir":
        raise InputError(f"{folder} is not a folder", hint="give a release folder "
                         "(out/RECIPE)")
    if not sums.is_file():
        verdict.problems.append(f"{SUMS}: missing (not a release folder?)")
        return verdict
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
        digest, _, rel = line.partition("  ")
        if len(digest) != 64 or not rel or rel.startswith("/") or ".." in rel.split("/"):
            verdict.problems.append(f"{SUMS}:{n}: not a 'SHA256  FILE' line")
            continue
        listed[rel] = digest
    signature = folder / SIGNATURE
    if signature.is_file():
        verdict.signed_by = _check_signature(signature, sums, keyring, verdict)
    elif require_signature or keyring is not None:
        verdict.problems.append(f"{SIGNATURE}: missing (the release is not signed)")
    for rel, digest in sorted(listed.items()):
        path = folder / rel
        verdict.checked += 1
        if not path.is_file():
            verdict.problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            verdict.problems.append(f"{rel}: its sha256 is not the one in {SUMS} (changed)")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in listed or rel in (SUMS, SIGNATURE):
            continue
        if rel.startswith(RESULTS):  # `xenforge test` writes there after the release
            verdict.unsealed.append(rel)
        else:
            verdict.problems.append(f"{rel}: not in {SUMS} (added)")
    return verdict


def _check_signature(signature: Path, sums: Path, keyring: Path | None,
                     verdict: Verdict) -> str | None:
    """The fingerprint of the key that made a good signature of ``sums``, else None (with
    the reason in ``verdict``). Good means: every signature in the file verifies
    (VALIDSIG), none by a revoked or expired key or expired itself, and the key is one the
    caller trusts - in ``keyring`` (a throwaway home with only that keyring), or without
    one, a key of full or ultimate trust in the user's keyring."""
    with tempfile.TemporaryDirectory(prefix="xenforge-gpg-") as home:
        argv: list[str | Path] = ["gpg", "--batch", "--status-fd", "1"]
        if keyring is not None:  # that keyring only, not the user's
            ring = Path(home) / "trusted.gpg"
            dearmor = runner.run(["gpg", "--batch", "--homedir", home, "--yes", "--dearmor",
                                  "--output", ring, keyring], check=False, capture=True)
            if dearmor.returncode != 0 and keyring.read_bytes()[:1] != b"-":
                ring.write_bytes(keyring.read_bytes())  # already binary
            argv += ["--homedir", home, "--no-default-keyring", "--keyring", ring,
                     "--trust-model", "always"]
        res = runner.run([*argv, "--verify", signature, sums], check=False, capture=True,
                         inherit_env=True)
        if keyring is not None:
            runner.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False,
                       capture=True)
    words = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("[GNUPG:] ")]
    codes = [w[1] for w in words if len(w) > 1]
    valid = [w[2] for w in words if len(w) > 2 and w[1] == "VALIDSIG"]
    bad = {"BADSIG": "it does not match SHA256SUMS", "NO_PUBKEY": "no key to check it with",
           "REVKEYSIG": "the key was revoked", "EXPKEYSIG": "the key has expired",
           "EXPSIG": "the signature has expired", "ERRSIG": "gpg could not check it"}
    why = next((text for code, text in bad.items() if code in codes), None)
    if why is None and (res.returncode != 0 or not valid
                        or codes.count("NEWSIG") > len(valid)):
        why = "gpg rejected it"
    if why is None and keyring is None and not {"TRUST_FULLY", "TRUST_ULTIMATE"} & set(codes):
        why = "the key is not one you trust (give the signer's key with --keyring)"
    if why is not None:
        verdict.problems.append(f"{SIGNATURE}: bad signature ({why})")
        return None
    return valid[0]
