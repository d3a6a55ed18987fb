"""Replaying folders of Rubin and ZTF alert files: what each file becomes on the topic."""

from __future__ import annotations

import shutil
from pathlib import Path

import fastavro
import pytest
from lsst.alert.packet import schema as lsst_schema

from broker.domain.ztf import from_ztf
from broker.simulator import AlertSimulator
from broker.streaming import files, wire
from broker.streaming.replay import (
    iter_alert_files,
    object_key,
    replay_folder,
    rubin_schema_id,
)
from broker.streaming.ztf import decode_container
from tests.support.data import ZTF_SAMPLES


def _fake_alert(tmp_path: Path, major: int = 11, minor: int = 1) -> Path:
    source = Path(lsst_schema.get_schema_path(major, minor)) / "sample_data" / "fakeAlert.avro"
    target = tmp_path / f"fakeAlert_{major}_{minor}.avro"
    shutil.copyfile(source, target)
    return target


def test_rubin_schema_id() -> None:
    assert rubin_schema_id("lsst.v11_1.alert") == 1101
    assert rubin_schema_id("lsst.v10_0.alert") == 1000
    assert rubin_schema_id("ztf.alert") is None
    assert rubin_schema_id("lsst.v11_1.diaSource") is None


def test_replay_of_the_ztf_samples() -> None:
    messages = list(iter_alert_files(ZTF_SAMPLES))
    assert len(messages) == 53
    # Sub-folders in sorted order, files by candid inside each.
    paths = [p for p, _, _ in messages]
    assert [p.parent.name for p in paths] == ["exposure_20200101"] * 50 + ["single"] * 3
    assert paths[0].name == "1095578115815010001.avro"
    assert [p.name for p in paths[50:]] == [
        "472263571115115000.avro", "1628364324215010017.avro",
        "2019_01_10_739260766315010006.avro",
    ]
    for path, value, key in messages:
        # ZTF containers travel unchanged, keyed by the objectId.
        assert value == path.read_bytes()
        _, record = decode_container(value)
        assert key == record["objectId"].encode("ascii")
        assert from_ztf(record, packet=value).object_id == key.decode()
    keys = [key for _, _, key in messages]
    assert len(set(keys)) == 53
    assert b"ZTF18abmmoot" in keys
    assert b"ZTF20aabaesm" in keys


def test_replay_folder_calls_produce_for_each() -> None:
    produced: list[tuple[bytes | None, bytes]] = []
    count = replay_folder(ZTF_SAMPLES, lambda key, value: produced.append((key, value)))
    assert count == len(produced) == 53
    assert produced[-2][0] == b"ZTF18abmmoot"
    assert produced[-2][1] == (ZTF_SAMPLES / "single" / "1628364324215010017.avro").read_bytes()


@pytest.mark.parametrize(("major", "minor"), [(11, 1), (10, 0)])
def test_rubin_container_becomes_wire_format(tmp_path: Path, major: int, minor: int) -> None:
    path = _fake_alert(tmp_path, major, minor)
    with path.open("rb") as stream:
        original = next(fastavro.reader(stream))
    messages = list(iter_alert_files(tmp_path))
    assert len(messages) == 1
    found, value, key = messages[0]
    assert found == path
    assert value[:1] == b"\x00"
    schema_id, record = wire.decode(value)
    assert schema_id == major * 100 + minor
    assert record["diaSourceId"] == original["diaSourceId"]
    assert record["diaSource"]["ra"] == pytest.approx(original["diaSource"]["ra"])
    assert key == str(original["diaObject"]["diaObjectId"]).encode("ascii")


def test_wire_format_folder_replays_byte_identically(tmp_path: Path) -> None:
    pairs = list(AlertSimulator(schema="11.1", seed=1).encoded(5))
    named = {wire.decode(value)[1]["diaSourceId"]: (key, value) for key, value in pairs}
    assert len(named) == 5
    assert files.write_alerts(tmp_path, ((i, v) for i, (_, v) in named.items())) == 5
    messages = list(iter_alert_files(tmp_path))
    assert [p for p, _, _ in messages] == [p for p, _ in files.read_alerts(tmp_path)]
    assert len(messages) == 5
    for path, value, key in messages:
        expected_key, expected_value = named[int(path.stem)]
        assert value == expected_value
        assert key == expected_key


def test_mixed_folder(tmp_path: Path) -> None:
    (tmp_path / "ztf").mkdir()
    shutil.copyfile(ZTF_SAMPLES / "single" / "472263571115115000.avro",
                    tmp_path / "ztf" / "472263571115115000.avro")
    _fake_alert(tmp_path)
    pairs = list(AlertSimulator(schema="11.0", seed=2).encoded(2))
    source_ids = [wire.decode(value)[1]["diaSourceId"] for _, value in pairs]
    for source_id, (_, value) in zip(source_ids, pairs, strict=True):
        files.write_alert(tmp_path, source_id, value)
    (tmp_path / "broken.avro").write_bytes(b"\x07 not an alert")
    (tmp_path / ".1.avro.partial").write_bytes(b"half")  # a writer at work: skipped
    (tmp_path / "notes.txt").write_text("not an alert file")  # other suffix: skipped
    messages = list(iter_alert_files(tmp_path))
    names = [p.name for p, _, _ in messages]
    assert names == [f"{i}.avro" for i in sorted(source_ids)] + [
        "broken.avro", "fakeAlert_11_1.avro", "472263571115115000.avro"
    ]
    by_name = {p.name: (value, key) for p, value, key in messages}
    # Undecodable bytes travel as they are, without a key, for ingest to dead-letter.
    assert by_name["broken.avro"] == (b"\x07 not an alert", None)
    assert wire.decode(by_name["fakeAlert_11_1.avro"][0])[0] == 1101
    assert by_name["472263571115115000.avro"][1] == b"ZTF17aaajnnn"
    for source_id, (key, value) in zip(source_ids, pairs, strict=True):
        assert by_name[f"{source_id}.avro"] == (value, key)


def test_object_key() -> None:
    assert object_key({"objectId": "ZTF18abmmoot"}) == b"ZTF18abmmoot"
    assert object_key({"diaObject": {"diaObjectId": 42}, "diaSource": {}}) == b"42"
    assert object_key({"diaObject": None, "diaSource": {"diaObjectId": 7}}) == b"7"
    assert object_key({"diaObject": None, "diaSource": {"diaObjectId": None,
                                                        "ssObjectId": 9}}) == b"9"
    assert object_key({"diaSource": {}}) is None


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        list(iter_alert_files(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError):
        replay_folder(ZTF_SAMPLES / "README.md", lambda key, value: None)
