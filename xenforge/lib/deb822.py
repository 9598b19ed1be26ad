"""deb822: the format of Debian's control data (.dsc files, Packages, apt-cache output)."""


from __future__ import annotations


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Stanzas of ``Field: value`` lines; continuation lines are kept (joined by newlines).

    An OpenPGP clear-signature wrapper (as around a .dsc) is dropped.
    """
    lines = text.splitlines()
    if lines and lines[0].startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        body_start = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
        lines = lines[body_start + 1:]
        end = next((i for i, line in enumerate(lines)
                    if line.startswith("-----BEGIN PGP SIGNATURE-----")), len(lines))
        lines = lines[:end]
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in lines:
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            last = key.strip()
            current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def checksums_sha256(stanza: dict[str, str]) -> dict[str, tuple[str, int]]:
    """``Checksums-Sha256`` as {file name: (sha256, size)}."""
    out: dict[str, tuple[str, int]] = {}
    for line in stanza.get("Checksums-Sha256", "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            out[parts[2]] = (parts[0], int(parts[1]))
    return out
