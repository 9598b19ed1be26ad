"""Signed releases and their SBOM, on the small fixture recipe with real GnuPG keys in a
temporary home: a good release passes `xenforge verify-release`; a tampered artifact, a
removed file, an added file and a bad signature each fail it with the file named; the
passphrase shows nowhere; the SBOM validates with spdx-tools and names the source, the
patch and the artifacts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import xf_test_stages

from xenforge import stages as stage_registry
from xenforge.cli import app as cli

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
PASSPHRASE = "correct-horse-battery-staple-9"

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is missing")


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _key(home: Path, uid: str, passphrase: str = "") -> str:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
                    "--passphrase", passphrase, "--quick-gen-key", uid, "ed25519", "sign",
                    "never"], check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                          "--list-secret-keys", uid], check=True, capture_output=True,
                         text=True).stdout
    return next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))


@pytest.fixture(autouse=True)
def _no_agents_left(tmp_path: Path) -> Iterator[None]:
    """gpg starts an agent per home; each test's homes are its own, so stop them after."""
    yield
    for home in [tmp_path / "gnupg", tmp_path / "other"]:
        if home.is_dir():
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                           capture_output=True)


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, str]:
    """A signed export of the fixture recipe (source, patched tree, a packed artifact)."""
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    home = tmp_path / "gnupg"
    fpr = _key(home, "Release Signer <release@example.org>", PASSPHRASE)
    monkeypatch.setenv("GNUPGHOME", str(home))
    monkeypatch.setenv("XENFORGE_SIGNING_KEY", fpr)
    monkeypatch.setenv("XENFORGE_SIGNING_PASSPHRASE", PASSPHRASE)
    cache = tmp_path / "cache"
    assert cli.main(["--cache-dir", str(cache), "build", str(fx / "kernel.yaml"), "--target",
                     "tree:mini", "-o", str(tmp_path / "out"), "--plain"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "out" / "mini-kernel"
    assert (folder / "SHA256SUMS.asc").read_text().startswith("-----BEGIN PGP SIGNATURE")
    # the passphrase is in no log, document or output
    seen = out + "".join(p.read_text(errors="replace") for root in (cache, folder)
                         for p in root.rglob("*") if p.is_file() and p.suffix != ".tar")
    assert PASSPHRASE not in seen
    pub = tmp_path / "signer.pub"
    subprocess.run(["gpg", "--homedir", str(home), "--export", "--output", str(pub), fpr],
                   check=True)
    return folder, pub, fpr


def _verify(folder: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["verify-release", str(folder), *extra])
    return code, capsys.readouterr().out


def test_a_good_release_passes(release: tuple[Path, Path, str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    folder, pub, fpr = release
    code, out = _verify(folder, "--keyring", str(pub), capsys=capsys)
    assert code == 0, out
    assert f"signature good (key {fpr})" in out and "0 problem(s)" in out


@pytest.mark.parametrize("damage", ["tamper", "remove", "add", "resum", "other-key",
                                    "unsigned", "revoked"])
def test_a_damaged_release_fails_naming_the_file(release: tuple[Path, Path, str],
                                                 tmp_path: Path, damage: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder, pub, _ = release
    if damage == "tamper":
        sbom = folder / "sbom.spdx.json"
        sbom.write_text(sbom.read_text().replace("mini", "evil", 1))
        want = "FAILED sbom.spdx.json: its sha256 is not the one in SHA256SUMS"
    elif damage == "remove":
        (folder / "provenance.intoto.json").unlink()
        want = "FAILED provenance.intoto.json: missing"
    elif damage == "add":
        (folder / "backdoor.sh").write_text("#!/bin/sh\n")
        (folder / "test-results").mkdir()  # a later `xenforge test`: a note, no failure
        (folder / "test-results" / "junit.xml").write_text("<testsuites/>")
        want = "FAILED backdoor.sh: not in SHA256SUMS (added)"
    elif damage == "resum":  # a tampered file with a SHA256SUMS to match: the signature
        sbom = folder / "sbom.spdx.json"
        sbom.write_text(sbom.read_text().replace("mini", "evil", 1))
        from xenforge.export.release import write_sums
        write_sums(folder)
        want = "FAILED SHA256SUMS.asc: bad signature (it does not match SHA256SUMS)"
    elif damage == "other-key":  # signed, but by a key the keyring does not trust
        other = _key(tmp_path / "other", "Mallory <m@example.org>")
        (folder / "SHA256SUMS.asc").unlink()
        subprocess.run(["gpg", "--homedir", str(tmp_path / "other"), "--batch", "--armor",
                        "--detach-sign", "--local-user", other, "--output",
                        str(folder / "SHA256SUMS.asc"), str(folder / "SHA256SUMS")], check=True)
        want = "FAILED SHA256SUMS.asc: bad signature (no key to check it with)"
    elif damage == "revoked":  # the signer revoked the key since: the keyring says so
        home = tmp_path / "gnupg"
        cert = (home / "openpgp-revocs.d" / f"{release[2]}.rev").read_text()
        rev = tmp_path / "revoke.asc"
        rev.write_text(cert.replace(":-----BEGIN", "-----BEGIN"))
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(rev)],
                       check=True, capture_output=True)
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--export",
                        "--output", str(pub), release[2]], check=True)
        want = "FAILED SHA256SUMS.asc: bad signature (the key was revoked)"
    else:
        (folder / "SHA256SUMS.asc").unlink()
        want = "FAILED SHA256SUMS.asc: missing (the release is not signed)"
    code, out = _verify(folder, "--keyring", str(pub), capsys=capsys)
    assert code == 1, out
    assert want in out, out


def test_a_missing_key_fails_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    monkeypatch.setenv("XENFORGE_SIGNING_KEY", "nobody@example.org")
    assert cli.main(["--cache-dir", str(tmp_path / "c"), "build", str(fx / "kernel.yaml"),
                     "-o", str(tmp_path / "out")]) == 2  # a release: the key must be there
    assert "no secret key 'nobody@example.org'" in capsys.readouterr().err
    assert not (tmp_path / "c" / "objects").exists() or not any(
        (tmp_path / "c" / "objects").iterdir())
    # a --target build (a CI shard) is no release: it goes on unsigned
    assert cli.main(["--cache-dir", str(tmp_path / "c"), "build", str(fx / "kernel.yaml"),
                     "--target", "tree:mini", "-o", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "mini-kernel" / "SHA256SUMS.asc").exists()


def test_the_sbom_validates_and_names_sources_patches_and_artifacts(
        release: tuple[Path, Path, str]) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    folder, _, _ = release
    sbom = folder / "sbom.spdx.json"
    problems = validate_full_spdx_document(parse_file(str(sbom)))
    assert not problems, [p.validation_message for p in problems]
    doc = json.loads(sbom.read_text())
    sources = [p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Source-")]
    assert [s["name"] for s in sources] == ["mini"]
    patches = [f for f in doc["files"] if f["SPDXID"].startswith("SPDXRef-Patch-")]
    series = (FIXTURES / "kernel_patches" / "mini" / "series").read_text().split()
    assert sorted(f["fileName"].removeprefix("./") for f in patches) == sorted(
        p for p in series if p.endswith(".patch"))
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
            for r in doc["relationships"]}
    for f in patches:
        assert (f["SPDXID"], "PATCH_APPLIED", sources[0]["SPDXID"]) in rels
    prov = json.loads((folder / "provenance.intoto.json").read_text())
    assert prov["_type"] == "https://in-toto.io/Statement/v1"
    nodes = prov["predicate"]["runDetails"]["byproducts"][0]["annotations"]["nodes"]
    assert {n["name"] for n in nodes} == {"source:mini", "tree:mini"}
    assert all(len(n["id"]) == 64 and n["version"] >= 1 for n in nodes)
