"""``files``: writes that are never half done."""

from __future__ import annotations

import pytest

from c2f_search import atomic_write


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = tmp_path / "x.json"
    atomic_write(p, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, broken)
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["x.json"]
