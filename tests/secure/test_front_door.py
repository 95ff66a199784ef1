"""`common.secure`'s front door: its docstring's example runs, and a learner encrypts bytes and files with
nothing but the names it exports."""

from __future__ import annotations

import doctest
import stat
from pathlib import Path

import pytest

import common.secure as secure


def test_the_docstring_example_runs_as_written() -> None:
    result = doctest.testmod(secure, raise_on_error=False, verbose=False)
    assert result.attempted >= 5 and result.failed == 0, result


def test_every_exported_name_is_there() -> None:
    assert sorted(secure.__all__) == sorted(set(secure.__all__))
    assert [name for name in secure.__all__ if not hasattr(secure, name)] == []


def test_files_round_trip_and_a_tampered_one_yields_no_file(tmp_path: Path) -> None:
    keyset = secure.Keyset.generate()
    plain, sealed, back = tmp_path / "weights.bin", tmp_path / "weights.bin.enc", tmp_path / "back.bin"
    plain.write_bytes(bytes(range(256)) * 9000)  # 2.3 MB: three chunks
    assert secure.encrypt_file(plain, sealed, keyset) == plain.stat().st_size
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert secure.decrypt_file(sealed, back, keyset) == plain.stat().st_size
    assert back.read_bytes() == plain.read_bytes()
    data = bytearray(sealed.read_bytes())
    data[-100] ^= 1
    sealed.write_bytes(data)
    back.unlink()
    with pytest.raises(secure.IntegrityError, match=r"weights\.bin\.enc: the last chunk failed authentication"):
        secure.decrypt_file(sealed, back, keyset)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin", "weights.bin.enc"]
    with pytest.raises(secure.KeyNotFound):
        secure.decrypt_bytes(secure.encrypt_bytes(b"x", keyset), secure.Keyset.generate())


def test_generate_makes_a_keyset_in_memory_or_in_a_folder_and_refuses_half_of_one(tmp_path: Path) -> None:
    in_memory = secure.Keyset.generate()
    assert len(in_memory) == 1 and in_memory.directory is None
    on_disk = secure.Keyset.generate(tmp_path / "keys", b"a long passphrase")
    sealed = secure.encrypt_bytes(b"kept", on_disk)
    assert secure.decrypt_bytes(sealed, secure.Keyset.load(tmp_path / "keys", b"a long passphrase")) == b"kept"
    with pytest.raises(secure.KeysetError, match="give the directory"):
        secure.Keyset.generate(password=b"a long passphrase")
    with pytest.raises(secure.KeysetError, match="needs a password"):
        secure.Keyset.generate(tmp_path / "other")
