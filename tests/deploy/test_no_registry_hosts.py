"""No tracked file names the host of a package registry, image registry or mirror.

Each client's own configuration says where packages come from (pip's config, apt's sources,
the Docker engine's); the project names none, so it works behind any proxy or mirror. The hosts
looked for are kept as SHA-256 prefixes, so this test names none either: every dotted name in a
tracked text file (and each of its parent domains) is hashed and looked up.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# SHA-256 (first 16 hex digits) of the hosts of PyPI and its file host, PyTorch's wheel index,
# Debian's and Ubuntu's mirrors, npm's and yarn's registries, Docker Hub, GitHub's, Quay's,
# Google's, AWS's public, Anaconda's and NVIDIA's registries, and the Hugging Face hub.
REGISTRY_HOSTS = frozenset(
    {
        "a4aa2ac280bb8d1a",
        "d6d7019ca9fcbf07",
        "c899567ee9068517",
        "9495278a74715c7e",
        "03e390c8d8a6f2cf",
        "e680c440a2e92079",
        "1ba4e37997a2e986",
        "c2b35955576ffa71",
        "a0f007d863a0ed19",
        "0dc11026ac75c015",
        "70bb4000cd2fab03",
        "dcb6cc3991f9799e",
        "5e9dacd3577946a2",
        "e83cc4bcd94e4ed5",
        "0fd460f0568e29c1",
        "271dacc9f4d0caf8",
        "70cca582c4895337",
        "d7d68c249de34389",
        "be2f919014d7cedb",
        "4db460c55b85212e",
        "15bdb44dafa6843b",
        "ae1f45a5b387e18d",
        "bfd6d16184a9b262",
        "df62e3961d508122",
        "0bf8a811d2e271e8",
        "e56002408dd4d44e",
    }
)
DOTTED = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")


def registry_hosts_in(text: str) -> set[str]:
    """The registry hosts named in ``text``: each dotted name and its parent domains."""
    found = set()
    for name in DOTTED.findall(text.lower()):
        labels = name.split(".")
        for start in range(len(labels) - 1):
            host = ".".join(labels[start:])
            if hashlib.sha256(host.encode()).hexdigest()[:16] in REGISTRY_HOSTS:
                found.add(host)
    return found


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.split(b"\0")
    return [REPO / n.decode() for n in names if n and (REPO / n.decode()).is_file()]


def test_the_detector_finds_a_mirror_in_a_url_and_a_bare_subdomain() -> None:
    # Built backwards so that this file does not spell it out either.
    debian = "gro.naibed.bed"[::-1]
    assert registry_hosts_in(f"mirror=${{mirror:-http://{debian}/debian}}") == {debian}
    assert registry_hosts_in(f"see CDN.{debian.upper()} for details") == {debian}
    assert registry_hosts_in("pip install torch==2.13.0; example.org; v1.2.3") == set()


def test_no_tracked_file_names_a_registry_host() -> None:
    offenders = {}
    for path in tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        hosts = registry_hosts_in(text)
        if hosts:
            offenders[str(path.relative_to(REPO))] = sorted(hosts)
    assert offenders == {}, (
        "registry hosts named in the tree (use the client's own configuration, or ask the user "
        f"for a variable, as ENVIRONMENT.md says): {offenders}"
    )
