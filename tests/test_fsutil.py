import os

import pytest

from vbbackup.errors import TargetExistsError
from vbbackup.fsutil import (
    atomic_output,
    file_adler32,
    read_checksum,
    write_checksum,
)


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "vda.full.data"
    with atomic_output(target) as f:
        f.write(b"hello")
        assert (tmp_path / "vda.full.data.partial").exists()
        assert not target.exists()
    assert target.read_bytes() == b"hello"
    assert not (tmp_path / "vda.full.data.partial").exists()


def test_atomic_output_removes_partial_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output(target) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_output_refuses_to_overwrite(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(TargetExistsError, match="already exists"), atomic_output(target):
        pass
    assert target.read_bytes() == b"old"
    with atomic_output(target, overwrite=True) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"


def test_checksum_file(tmp_path):
    data = tmp_path / "x.data"
    data.write_bytes(b"abc" * 1000)
    write_checksum(data, file_adler32(data))
    assert (tmp_path / "x.data.chksum").read_text() == str(file_adler32(data))
    assert read_checksum(data) == file_adler32(data)
    assert read_checksum(tmp_path / "missing.data") is None
