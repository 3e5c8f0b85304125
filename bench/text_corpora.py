"""Real text sets that nobody on the team wrote, collected from this machine only.

- ``debian``: Debian package descriptions (the ``Description:`` line of apt's package
  lists, ``/var/lib/apt/lists/*_Packages.lz4``) labelled by archive section (``Section:``,
  component prefix dropped), the largest sections, sampled to the same count each.
- ``man``: English man pages (``/usr/share/man/man1`` .. ``man8``) labelled by section,
  the text taken from the roff source with requests, escapes and the ``.TH`` line (which
  names the section) removed, cut to its first characters.

Nothing is downloaded; sampling is seeded, so a run on the same machine sees the same rows.
"""

from __future__ import annotations

import csv
import gzip
import random
import re
import subprocess
from collections import defaultdict
from pathlib import Path

APT_LISTS = Path("/var/lib/apt/lists")
MAN_ROOT = Path("/usr/share/man")
APT_HELPER = "/usr/lib/apt/apt-helper"

# roff: font/size/escape sequences, then named characters; the order matters
_ROFF_ESCAPES = re.compile(
    r"\\f(?:\[[^\]]*\]|\(..|.)"  # font changes \fB \f(CW \f[B]
    r"|\\s[+-]?\d+"  # size changes \s-1
    r"|\\\*(?:\[[^\]]*\]|\(..|.)"  # strings \*(lq
    r"|\\\((..)"  # special characters \(em
    r"|\\\[[^\]]*\]"  # \[em]
    r"|\\[&|^%c:!/,)]"  # zero-width and spacing escapes
    r"|\\[eE]"  # the escape character itself
)
_ROFF_REQUEST = re.compile(r"^[.'][ \t]*(\S+)\s*(.*)$")
_NO_TEXT_REQUESTS = {
    "TH", "so", "ds", "de", "nr", "ie", "if", "el", "ig", "tr", "ft", "ps", "in", "ti", "ta",
    "ne", "sp", "br", "na", "ad", "hy", "nh", "fi", "nf", "ll", "PD", "IX", "ce", "rm",
}  # fmt: skip


def debian_descriptions(
    per_class: int = 400, classes: int = 8, seed: int = 0
) -> list[tuple[str, str]]:
    """``(description, section)`` rows from the largest ``classes`` archive sections."""
    by_section: dict[str, set[str]] = defaultdict(set)
    for path in sorted(APT_LISTS.glob("*_Packages.lz4")):
        text = subprocess.run(
            [APT_HELPER, "cat-file", str(path)], check=True, capture_output=True, text=True
        ).stdout
        for stanza in text.split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in stanza.splitlines()
                if ": " in line and not line.startswith(" ")
            )
            description, section = fields.get("Description"), fields.get("Section")
            if description and section:
                by_section[section.rsplit("/", 1)[-1]].add(description.strip())
    return _balanced(by_section, per_class, classes, seed)


def man_pages(
    per_class: int = 300, max_chars: int = 3000, seed: int = 0, min_pages: int = 100
) -> list[tuple[str, str]]:
    """``(text, "manN")`` rows: English man pages, sections with ``min_pages`` pages or more."""
    by_section: dict[str, set[str]] = defaultdict(set)
    for n in range(1, 9):
        pages = sorted((MAN_ROOT / f"man{n}").glob("*.gz"))
        random.Random(seed + n).shuffle(pages)
        for page in pages[: per_class * 2]:  # spare pages for redirects and empty ones
            text = roff_text(page)[:max_chars]
            if len(text.split()) >= 20:
                by_section[f"man{n}"].add(text)
    by_section = {s: texts for s, texts in by_section.items() if len(texts) >= min_pages}
    return _balanced(by_section, per_class, len(by_section), seed)


def roff_text(page: Path) -> str:
    """The running text of a gzipped roff page (empty for a ``.so`` redirect)."""
    try:
        source = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
    except (OSError, EOFError):
        return ""
    words: list[str] = []
    for line in source.splitlines():
        request = _ROFF_REQUEST.match(line)
        if request:
            name, rest = request.groups()
            if name.startswith('\\"') or name in _NO_TEXT_REQUESTS:
                if name == "so":
                    return ""
                continue
            line = rest.replace('"', " ")
        line = _ROFF_ESCAPES.sub(" ", line.split('\\"', 1)[0]).replace("\\-", "-")
        words.extend(line.replace("\\", " ").split())
    return " ".join(words)


def _balanced(
    by_class: dict[str, set[str]], per_class: int, classes: int, seed: int
) -> list[tuple[str, str]]:
    """The ``classes`` largest classes, ``min(per_class, smallest)`` texts each, shuffled.
    A text that occurs under two labels is dropped from both."""
    owners: dict[str, set[str]] = defaultdict(set)
    for label, texts in by_class.items():
        for text in texts:
            owners[text].add(label)
    clean = {
        label: sorted(t for t in texts if len(owners[t]) == 1) for label, texts in by_class.items()
    }
    largest = sorted(clean, key=lambda label: (-len(clean[label]), label))[:classes]
    count = min(per_class, *(len(clean[label]) for label in largest))
    rng = random.Random(seed)
    rows = [(text, label) for label in largest for text in rng.sample(clean[label], count)]
    rng.shuffle(rows)
    return rows


def write_csv(rows: list[tuple[str, str]], path: Path) -> Path:
    """A text-csv dataset (columns ``text``, ``label``)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path
