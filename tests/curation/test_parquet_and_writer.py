"""The release importers read parquet (Hugging Face layout, written here with pyarrow) one row group at a time, and
the SFT dataset writer streams its shards to a private directory: nothing is visible at the URI before publish."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from firm.curation.dataset import SFTDatasetWriter, read_sft_dataset
from firm.errors import InputError


def _png(img) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_release_rows_import_one_row_group_at_a_time(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    from firm.curation import importers
    from firm.curation.synthetic import synthetic_edit_items

    items = synthetic_edit_items(5, size=32)
    cell = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": [f"p{i}" for i in range(5)],
            "source_image": pa.array([{"bytes": _png(it.source), "path": None} for it in items], type=cell),
            "edited_image": pa.array([{"bytes": _png(it.edited), "path": None} for it in items], type=cell),
            "instruction": [f"add squares {i}" for i in range(5)],
            "response": [f'{{"reasoning": "r{i}", "score": [{i % 5 + 1}]}}' for i in range(4)] + ["no score"],
        }
    )
    src = tmp_path / "FIRM-Edit-Instruction" / "data"
    src.mkdir(parents=True)
    pq.write_table(table, src / "train-00000-of-00001.parquet", row_group_size=2)  # 3 row groups

    asked: list[list[int]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(list(kwargs.get("row_groups") or []))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    rows = importers.iter_rows(src.parent)
    _, n, first = next(rows)
    assert (n, first["id"]) == (1, "p0") and asked == [
        [0]
    ]  # the first row came from the first row group alone
    assert [r["id"] for _, _, r in rows] == ["p1", "p2", "p3", "p4"] and asked == [[0], [1], [2]]

    uri, stats = importers.import_firm_edit(src.parent, str(tmp_path / "ds"), val_fraction=0.0)
    ds = read_sft_dataset(uri)
    assert [(r.id, r.axis, r.score, r.instruction) for r in ds.rows] == [
        (f"p{i}", "execution", i % 5 + 1, f"add squares {i}") for i in range(4)
    ]  # the axis from the release's name (FIRM-Edit-Instruction: execution)
    assert stats["items"] == {"read": 5, "dropped": {"answer_unparseable": 1}}
    img = (Path(uri.removeprefix("file://")) / ds.rows[0].images[1]).read_bytes()
    assert img == _png(items[0].edited)


def test_the_writer_streams_shards_and_publishes_only_at_finish(tmp_path: Path) -> None:
    from firm.curation.synthetic_sft import synthetic_sft_rows
    from firm.storage import to_uri

    pairs = list(synthetic_sft_rows(n_edit=3, axes=("execution",), val_fraction=0.0, size=32))
    out = tmp_path / "ds"
    writer = SFTDatasetWriter("s", shard_size=2)
    try:
        for row, images in pairs:
            for name, img in images.items():
                writer.add_image(name, img)
            writer.add(row)
        assert not hasattr(writer, "_rows")  # no rows kept in memory
        lines = (writer.dir / "shards" / "train-00000.jsonl").read_text().splitlines()
        assert len(lines) == 2  # the full shard is on disk (privately) before finish
        assert not out.exists()  # and nothing is at the destination
        uri = writer.finish(to_uri(out))
    finally:
        writer.close()
    ds = read_sft_dataset(uri)
    assert ds.info.shards == ["shards/train-00000.jsonl", "shards/train-00001.jsonl"]
    assert [r.id for r in ds.rows] == [r.id for r, _ in pairs] and ds.info.rows == {"train": 3}

    # a writer that fails before finish leaves nothing behind
    bad = SFTDatasetWriter("s", shard_size=2)
    try:
        row, images = pairs[0]
        with pytest.raises(InputError, match="was not added"):
            bad.add(row)
    finally:
        bad.close()
    assert not bad.dir.exists()  # its private directory is gone, and it had published nothing
