"""Regenerates the corpora bundled in python/edlm/corpus/ from Debian packages (no R needed).

Jane Austen's six novels come from r-cran-janeaustenr (an R lazy-load database, read with the
`rdata` package); the King James Bible from bible-kjv-text, dumped by the `bible` program of
bible-kjv. Run on Debian after `apt-get update` (it calls apt-get download), or pass --debs:

    .venv/bin/pip install rdata        # regeneration only; not a dependency of edlm
    .venv/bin/python scripts/make_corpus.py
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import re
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

PACKAGES = ("r-cran-janeaustenr", "bible-kjv-text", "bible-kjv")
AUSTEN_DB = "usr/lib/R/site-library/janeaustenr/data/Rdata"
# Variable names in the R database, in publication order; Persuasion is held out for validation.
AUSTEN_BOOKS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)
KJV_VERSES = 31102  # verses in the Authorized Version; a dump with fewer was cut short
VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def sh(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def fetch_debs(dest: Path) -> dict[str, Path]:
    sh("apt-get", "download", *PACKAGES, cwd=dest)
    return find_debs(dest)


def find_debs(folder: Path) -> dict[str, Path]:
    debs = {}
    for name in PACKAGES:
        found = sorted(folder.glob(f"{name}_*.deb"))
        if not found:
            sys.exit(f"make_corpus: no {name}_*.deb in {folder} (apt-get update, then rerun)")
        debs[name] = found[-1]
    return debs


def read_austen(root: Path) -> dict[str, list[str]]:
    """Lines of each novel from janeaustenr's lazy-load database (.rdx index, .rdb blobs)."""
    try:
        import rdata
    except ImportError:
        sys.exit("make_corpus: reading janeaustenr needs the `rdata` package: pip install rdata")
    index = rdata.read_rds(root / f"{AUSTEN_DB}.rdx")
    blobs = (root / f"{AUSTEN_DB}.rdb").read_bytes()
    books = {}
    for name, (offset, length) in index["variables"].items():
        # Each entry: a 4-byte big-endian raw length, then a zlib stream of an R serialization.
        blob = blobs[offset : offset + length]
        raw = zlib.decompress(blob[4:])
        assert len(raw) == int.from_bytes(blob[:4], "big"), name
        with warnings.catch_warnings():
            # The blobs have no RDS file header; rdata warns "assumed RDS", which is right.
            warnings.simplefilter("ignore")
            parsed = rdata.parser.parse_data(raw)
        books[str(name)] = [str(line) for line in rdata.conversion.convert(parsed)]
    missing = set(AUSTEN_BOOKS) - set(books)
    if missing:
        sys.exit(f"make_corpus: janeaustenr lacks {sorted(missing)}; found {sorted(books)}")
    return books


def unwrap(lines: list[str]) -> str:
    """Project Gutenberg's hard-wrapped lines -> one line per paragraph, blank line between.

    Wrapped lines would teach a BPE model a newline every ~70 characters, which no other text
    has; double spaces after full stops go for the same reason. Words are otherwise untouched.
    """
    paragraphs, current = [], []
    for line in lines + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(re.sub(r"\s+", " ", " ".join(current)))
            current = []
    return "\n\n".join(paragraphs) + "\n"


def read_kjv(root: Path) -> str:
    """The whole Bible, one paragraph per chapter, verse numbers and book names stripped."""
    out = subprocess.run(
        [str(root / "usr/bin/bible"), "-f", "-p", str(root / "usr/lib"), "-l10000",
         "gen1:1-rev22:21"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # -f turns pretty-printing off: one "Ge1:1 In the beginning ..." line per verse.
    # bible needs both usr/lib/bible.data and bible.data.conc (it crashes without the latter),
    # and libreadline8 from the system; nothing else of the package has to be installed.
    if out.returncode != 0:
        sys.exit(f"make_corpus: bible failed ({out.returncode}): {out.stderr.strip()}")
    chapters: dict[tuple[str, str], list[str]] = {}
    verses = 0
    for line in out.stdout.splitlines():
        match = VERSE.match(line)
        if not match:
            sys.exit(f"make_corpus: unexpected line from bible: {line!r}")
        book, chapter, _, text = match.groups()
        chapters.setdefault((book, chapter), []).append(text.strip())
        verses += 1
    if verses != KJV_VERSES:
        sys.exit(f"make_corpus: bible printed {verses} verses, expected {KJV_VERSES}")
    return "\n\n".join(" ".join(v) for v in chapters.values()) + "\n"


def write_xz(path: Path, text: str) -> dict:
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed settings and no timestamp in .xz, so a rerun gives byte-identical files.
    path.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    return {
        "file": path.name,
        "chars": len(text),
        "bytes": len(data),
        "xz": path.stat().st_size,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


NOTICE = """# Bundled corpora

Plain text, UTF-8, xz-compressed. Regenerate with `python scripts/make_corpus.py` (it downloads the
Debian packages below with `apt-get download` and needs `pip install rdata`; no R).

## Jane Austen, six novels (`austen/*.txt.xz`)

- Source: Debian package `r-cran-janeaustenr` {austen_version}, the R package janeaustenr by
  Julia Silge (MIT licence, Copyright 2016-2017 Julia Silge), which packages the Project Gutenberg
  texts. The novels themselves (1811-1818) are in the public domain.
- Processing: hard-wrapped lines joined into one line per paragraph, paragraphs separated by a blank
  line, runs of whitespace collapsed to one space. Spelling, punctuation and Gutenberg's `_italic_`
  underscores are kept as in the source.
- Splits (see `edlm.data`): train = the first five novels; valid = Persuasion.

| file | split | characters | UTF-8 bytes | xz bytes | sha256 of the text |
|---|---|---|---|---|---|
{austen_rows}

## King James Bible (`kjv.txt.xz`), out-of-domain evaluation

- Source: Debian packages `bible-kjv-text` {kjv_text_version} (the text) and `bible-kjv`
  {kjv_version} (the `bible` program that decodes it), the Bible Retrieval System by Chip Chapin,
  Debian port by Matthew Vernon. The program is GPL-2+; its data files are "for unrestricted use".
  The King James Version (1611) text is in the public domain (Debian's copyright file says so).
- Processing: `bible -f -p usr/lib -l10000 gen1:1-rev22:21` prints one "Ge1:1 text" line per verse
  (31,102 verses); the reference is removed, the verses of each chapter are joined with a space, and
  chapters are separated by a blank line (no book or chapter headings).

| file | split | characters | UTF-8 bytes | xz bytes | sha256 of the text |
|---|---|---|---|---|---|
{kjv_rows}
"""


def row(info: dict, split: str) -> str:
    return (
        f"| {info['file']} | {split} | {info['chars']:,} | {info['bytes']:,} | {info['xz']:,} | "
        f"`{info['sha256'][:16]}` |"
    )


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debs", type=Path, help="folder with the .deb files (else apt-get)")
    parser.add_argument("--out", type=Path, default=here / "python/edlm/corpus")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        debs = find_debs(args.debs) if args.debs else fetch_debs(tmp)
        root = tmp / "root"
        for deb in debs.values():
            sh("dpkg-deb", "-x", str(deb), str(root))
        versions = {name: sh("dpkg-deb", "-f", str(deb), "Version").strip()
                    for name, deb in debs.items()}  # fmt: skip

        books = read_austen(root)
        austen = [
            (write_xz(args.out / "austen" / f"{name}.txt.xz", unwrap(books[name])),
             "valid" if name == "persuasion" else "train")
            for name in AUSTEN_BOOKS
        ]  # fmt: skip
        kjv = write_xz(args.out / "kjv.txt.xz", read_kjv(root))

    (args.out / "NOTICE.md").write_text(
        NOTICE.format(
            austen_version=versions["r-cran-janeaustenr"],
            kjv_text_version=versions["bible-kjv-text"],
            kjv_version=versions["bible-kjv"],
            austen_rows="\n".join(row(info, split) for info, split in austen),
            kjv_rows=row(kjv, "test"),
        )
    )
    for info, _ in austen + [(kjv, "test")]:
        print(f"{info['file']:28s} {info['chars']:>10,} chars {info['xz']:>10,} bytes xz")


if __name__ == "__main__":
    main()
