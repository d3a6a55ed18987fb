"""ZTF packets into the internal model, on the 53 real ZTF public alerts in broker/data/ztf."""

from __future__ import annotations

import copy
import gzip
import io
import math
import warnings
from pathlib import Path
from typing import Any

import fastavro
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from broker.constants import NJY_AB_ZEROPOINT
from broker.domain.alerts import InvalidAlertError, Survey, flux_to_mag, mag_to_flux
from broker.domain.ztf import (
    FORCED_FLUX_SENTINEL,
    forced_id,
    from_ztf,
    upper_limits,
)
from broker.exceptions import (
    CorruptBodyError,
    PermanentError,
    TruncatedMessageError,
    WireFormatError,
)
from broker.streaming.ztf import (
    NotAContainerError,
    decode_container,
    is_container,
    read_container,
)
from tests.support.data import ZTF_SAMPLES, rubin_sample_alert

ALL_FILES = sorted(ZTF_SAMPLES.glob("*/*.avro"))
MOOT = ZTF_SAMPLES / "single" / "1628364324215010017.avro"
XXF = ZTF_SAMPLES / "single" / "2019_01_10_739260766315010006.avro"
JNNN = ZTF_SAMPLES / "single" / "472263571115115000.avro"

# The table of shared/data/README.md (sections 3b and 3c): candid -> objectId, ra, dec, magpsf.
_TABLE = """
472263571115115000 ZTF17aaajnnn 179.64020 52.02972 -
739260766315010006 ZTF17aaacxxf 75.20078 35.36140 -
1628364324215010017 ZTF18abmmoot 304.64456 33.98762 -
1095578115815010001 ZTF20aabaesm 197.59003 7.35764 14.58
1095578115815010002 ZTF20aabaesn 197.72560 7.32606 14.55
1095578115815010003 ZTF20aabaest 197.72210 7.30612 15.70
1095578115815010005 ZTF19acvegtc 197.35446 7.23540 15.66
1095578115815010008 ZTF20aabaesr 197.80453 7.10891 15.34
1095578115815010009 ZTF20aabaesq 197.33962 7.03728 15.09
1095578115815010012 ZTF20aabaesv 197.39382 6.93711 16.14
1095578115815010013 ZTF20aabaesz 197.51283 6.93285 16.31
1095578115815010018 ZTF20aabaesx 198.03419 6.62979 16.45
1095578115815010034 ZTF20aabaesw 198.05811 6.66198 15.46
1095578115815010036 ZTF20aabaesy 197.66956 6.75697 16.56
1095578115815010037 ZTF20aabaesk 197.54511 6.77061 14.38
1095578115815010038 ZTF20aabaesl 197.62312 6.77208 14.28
1095578115815010050 ZTF20aabaesp 197.75779 6.71212 14.66
1095578115815010052 ZTF20aabaesu 197.57897 6.71603 15.52
1095578115815010053 ZTF20aabaeso 197.69873 6.78471 14.54
1095578115915010001 ZTF20aabaekx 198.81069 7.39377 16.39
1095578115915010002 ZTF20aabaekp 198.58591 7.34424 15.61
1095578115915010003 ZTF20aabaekn 198.78550 7.32641 14.88
1095578115915010004 ZTF20aabaekq 198.39538 7.32545 16.05
1095578115915010009 ZTF20aabaekw 198.89844 7.24430 16.34
1095578115915010012 ZTF20aabaekl 198.56419 7.12888 14.89
1095578115915010013 ZTF20aabaela 198.52873 7.05114 16.85
1095578115915010014 ZTF20aabaekt 198.34193 7.03942 15.90
1095578115915010019 ZTF20aabaeks 198.65589 6.94789 15.83
1095578115915010020 ZTF20aabaeko 198.64168 6.93817 15.21
1095578115915010040 ZTF20aabaekz 198.29573 6.66907 16.74
1095578115915010041 ZTF20aabaeku 198.78104 6.76806 16.32
1095578115915010042 ZTF20aabaekm 198.81827 6.77679 14.85
1095578115915010045 ZTF20aabaekr 198.61021 6.79016 15.81
1095578115915010048 ZTF20aabaekv 198.49154 6.79688 16.60
1095578115915015025 ZTF20aabaeky 198.21279 6.85560 16.97
1095578116015010001 ZTF18acqsson 196.49053 8.18443 15.73
1095578116115010003 ZTF18acpxdyo 195.84213 8.21695 14.71
1095578116115010004 ZTF18acqucmw 195.46932 8.18791 14.98
1095578116115010005 ZTF18acqsqrk 195.67247 8.15200 15.42
1095578116115010007 ZTF18aajjzhn 195.50880 8.11542 14.72
1095578116115010009 ZTF18acqtfeu 195.81318 8.05862 14.51
1095578116115010010 ZTF18acqtfew 195.78202 7.94549 15.49
1095578116115010011 ZTF18acqucmk 195.91692 7.76491 15.27
1095578116215010002 ZTF20aabaekb 195.53316 6.95963 15.70
1095578116215010029 ZTF20aabaeka 195.98079 6.77148 15.51
1095578116215010035 ZTF20aabaejz 196.22637 6.67104 13.41
1095578116215015006 ZTF18acqtwgi 196.27311 6.99599 16.51
1095578116315015000 ZTF20aabadts 197.03158 7.41006 16.48
1095578116315015001 ZTF20aabadtp 196.49070 7.39903 16.63
1095578116315015002 ZTF20aabadtk 196.34553 7.37109 15.38
1095578116315015003 ZTF20aabadtm 196.48678 7.32638 15.90
1095578116315015004 ZTF20aabadtn 196.78802 7.01838 16.17
1095578116315015007 ZTF20aabadtj 196.72054 6.90796 14.72
"""
EXPECTED = {
    int(candid): (object_id, float(ra), float(dec), None if mag == "-" else float(mag))
    for candid, object_id, ra, dec, mag in (line.split() for line in _TABLE.strip().splitlines())
}
EXPOSURE_JD = 2458850.0781134


def _candid_of(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[-1])


def _decoded(path: Path) -> tuple[str, dict[str, Any], bytes]:
    data = path.read_bytes()
    version, record = decode_container(data)
    return version, record, data


def _open_fits(stamp: bytes) -> fits.HDUList:
    with warnings.catch_warnings():
        # ZTF writes a SIMPLE card astropy finds non-standard in layout; the data are fine.
        warnings.simplefilter("ignore", VerifyWarning)
        hdus = fits.open(io.BytesIO(gzip.decompress(stamp)))
        hdus.verify("silentfix")
        return hdus


# ---- every real sample --------------------------------------------------------------------


def test_all_53_samples_are_present() -> None:
    assert len(ALL_FILES) == 53
    assert len(list((ZTF_SAMPLES / "exposure_20200101").glob("*.avro"))) == 50
    assert {_candid_of(p) for p in ALL_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_sample_decodes_and_normalises(path: Path) -> None:
    version, record, data = _decoded(path)
    alert = from_ztf(record, packet=data)
    candid = _candid_of(path)
    object_id, ra, dec, magpsf = EXPECTED[candid]

    assert version in {"3.2", "3.3"}
    assert alert.schema == f"ztf:{version}"
    assert alert.survey is Survey.ztf
    assert alert.packet == data
    assert alert.alert_id == candid
    assert alert.object_id == object_id
    d = alert.detection
    assert d.ra == pytest.approx(ra, abs=1e-5)
    assert d.dec == pytest.approx(dec, abs=1e-5)
    assert d.band == "r"  # every sample is fid 2
    if magpsf is not None:
        assert d.mag == pytest.approx(magpsf, abs=0.005)
        assert d.mjd == pytest.approx(EXPOSURE_JD - 2400000.5, abs=1e-9)
    # The flux converts back to magpsf, and its sign follows isdiffpos.
    candidate = record["candidate"]
    assert d.mag == pytest.approx(candidate["magpsf"], abs=1e-4)
    assert (d.psf_flux < 0) == (candidate["isdiffpos"] in ("f", "0"))
    assert d.mag_err == pytest.approx(candidate["sigmapsf"], rel=1e-9)
    assert d.snr == pytest.approx(abs(d.psf_flux) / d.psf_flux_err, rel=1e-9)

    # History: detections only, unique ids, one object, none of them the alert itself.
    detected = [p for p in record["prv_candidates"] or () if p["candid"] is not None]
    ids = [h.source_id for h in alert.history]
    assert len(ids) == len(set(ids)) == len({p["candid"] for p in detected} - {candid})
    assert candid not in ids
    assert all(h.object_id == object_id for h in alert.history)
    assert [h.mjd for h in alert.history] == sorted(h.mjd for h in alert.history)
    assert all(h.mjd < d.mjd for h in alert.history)
    assert alert.forced == ()  # schema 3.x has no fp_hists

    assert set(alert.cutouts) == {"science", "template", "difference"}
    assert alert.cutouts["difference"] == record["cutoutDifference"]["stampData"]


@pytest.mark.parametrize("path", [MOOT, XXF, JNNN, ALL_FILES[0]], ids=lambda p: p.name)
def test_cutouts_are_gzipped_fits(path: Path) -> None:
    _, record, _ = _decoded(path)
    alert = from_ztf(record)
    for kind in ("science", "template", "difference"):
        stamp = alert.cutouts[kind]
        assert stamp[:2] == b"\x1f\x8b"
        hdus = _open_fits(stamp)
        image = hdus[0].data
        assert image.ndim == 2
        assert 10 <= image.shape[0] <= 64
        assert 10 <= image.shape[1] <= 64


# ---- one alert in detail ------------------------------------------------------------------


def test_ztf18abmmoot_values() -> None:
    version, record, _ = _decoded(MOOT)
    alert = from_ztf(record)
    d = alert.detection
    assert version == "3.3"
    assert alert.schema == "ztf:3.3"
    assert d.object_id == "ZTF18abmmoot"
    assert d.source_id == 1628364324215010017
    assert d.ra == pytest.approx(304.644564, abs=1e-7)
    assert d.dec == pytest.approx(33.9876222, abs=1e-7)
    assert d.band == "r"
    assert d.mjd == pytest.approx(2459382.8643287 - 2400000.5, abs=1e-9)
    # isdiffpos 'f': the difference flux is negative; 18.976 mag is about 94,100 nJy.
    expected_flux = 10 ** (-0.4 * (18.976173400878906 - 31.4))
    assert d.psf_flux == pytest.approx(-expected_flux, rel=1e-12)
    assert -95_000 < d.psf_flux < -93_000
    assert flux_to_mag(d.psf_flux) == pytest.approx(18.976173400878906, abs=1e-4)
    assert d.psf_flux_err == pytest.approx(expected_flux * math.log(10) / 2.5 * 0.08588872849941254)
    assert d.snr == pytest.approx(1.0857362 / 0.08588872849941254, rel=1e-6)
    assert d.reliability == pytest.approx(0.9999991655349731)  # drb, not rb (0.9457)
    # distnr 0.078": the reference source is the object, total = reference + difference.
    reference = mag_to_flux(18.635000228881836)
    assert d.science_flux == pytest.approx(reference - expected_flux, rel=1e-12)
    reference_err = reference * 0.02500000037252903 * math.log(10) / 2.5
    assert d.science_flux_err == pytest.approx(math.hypot(reference_err, d.psf_flux_err))

    assert [h.source_id for h in alert.history] == [
        1599458264215010035, 1602414474215010027, 1605422874215010029, 1608448624215010019,
        1610449834215010019, 1613401114215010022, 1615436404215010020, 1617446634215010018,
        1622429814215010028, 1624389304215010024,
    ]
    first = alert.history[0]
    assert first.mjd == pytest.approx(2459353.9582639 - 2400000.5, abs=1e-9)
    assert first.psf_flux < 0
    assert first.mag == pytest.approx(19.25079917907715, abs=1e-4)
    assert first.reliability == pytest.approx(0.9071429967880249)  # no drb back then: rb


def test_upper_limits_are_the_non_detections() -> None:
    _, record, _ = _decoded(MOOT)
    limits = upper_limits(record)
    assert len(limits) == 24 - 10
    assert limits == sorted(limits)
    assert {band for _, band, _ in limits} == {"g", "r"}
    assert limits[0] == pytest.approx((2459353.9091088 - 2400000.5, "g", 20.45829963684082))
    history_mjds = {h.mjd for h in from_ztf(record).history}
    assert not history_mjds & {mjd for mjd, _, _ in limits}


def test_schema_3_2_sample_without_drb_uses_rb() -> None:
    version, record, _ = _decoded(XXF)
    assert version == "3.2"
    assert "drb" not in record["candidate"]
    alert = from_ztf(record)
    assert alert.schema == "ztf:3.2"
    assert alert.object_id == "ZTF17aaacxxf"
    assert alert.detection.reliability == pytest.approx(0.4471428692340851)
    assert len(alert.history) == 22
    by_id = {h.source_id: h for h in alert.history}
    # isdiffpos '1'/'t' and '0'/'f' are both spellings of the sign.
    assert by_id[710243366315015036].psf_flux > 0
    assert by_id[739203156315010009].psf_flux < 0
    assert by_id[739203156315010009].mag == pytest.approx(17.906200408935547, abs=1e-4)


def test_positive_alert_and_schema_override() -> None:
    _, record, _ = _decoded(JNNN)
    alert = from_ztf(record, schema_version="3.3-test")
    assert alert.schema == "ztf:3.3-test"
    assert alert.detection.psf_flux > 0  # isdiffpos 't'
    assert alert.history == ()
    assert len(upper_limits(record)) == 11


# ---- forced photometry (schema 4.x) -------------------------------------------------------


def _fp(pid: int, jd: float, flux: float | None, unc: float | None = 25.0,
        magzpsci: float | None = 26.3, fid: int = 2, **extra: Any) -> dict[str, Any]:
    entry = {
        "field": 687, "rcid": 42, "fid": fid, "pid": pid, "rfid": 687120242, "magzpsci": magzpsci,
        "programid": 1, "jd": jd, "forcediffimflux": flux, "forcediffimfluxunc": unc,
        "procstatus": "0", "distnr": 3.2, "ranr": 304.6, "decnr": 33.9, "magnr": 18.6,
        "sigmagnr": 0.02,
    }
    entry.update(extra)
    return entry


def test_forced_photometry_from_fp_hists() -> None:
    _, record, _ = _decoded(MOOT)
    record = copy.deepcopy(record)
    record["fp_hists"] = [
        _fp(1622383694215, 2459376.8836921, 120.5, fid=1),
        _fp(1599409104215, 2459353.9091088, -40.0, 12.0, distnr=0.1),
        _fp(1600000000015, 2459354.0, None),  # no flux
        _fp(1600000000115, 2459354.1, FORCED_FLUX_SENTINEL),  # the sentinel
        _fp(1600000000215, 2459354.2, 10.0, magzpsci=None),  # no zero point
        _fp(1599409104215, 2459353.9091088, -40.0, 12.0, distnr=0.1),  # repeated entry
    ]
    alert = from_ztf(record)
    assert len(alert.forced) == 2
    early, late = alert.forced  # oldest first
    assert early.mjd == pytest.approx(2459353.9091088 - 2400000.5, abs=1e-9)
    assert early.band == "r"
    assert late.band == "g"
    scale = 10 ** (-0.4 * (26.3 - NJY_AB_ZEROPOINT))
    assert late.psf_flux == pytest.approx(120.5 * scale)
    assert late.psf_flux_err == pytest.approx(25.0 * scale)
    # 1 DN at magzpsci 26.3 is 26.3 mag: 120.5 DN is 26.3 - 2.5 log10(120.5) mag.
    assert flux_to_mag(late.psf_flux) == pytest.approx(26.3 - 2.5 * math.log10(120.5))
    assert late.science_flux is None  # distnr 3.2": the reference source is a neighbour
    assert early.psf_flux == pytest.approx(-40.0 * scale)
    assert early.science_flux == pytest.approx(mag_to_flux(18.6) - 40.0 * scale)
    assert early.object_id == late.object_id == "ZTF18abmmoot"
    assert early.forced_id == forced_id("ZTF18abmmoot", 1599409104215)
    assert late.forced_id == forced_id("ZTF18abmmoot", 1622383694215)


def test_forced_ids_are_deterministic_positive_and_distinct() -> None:
    pids = [1095578115815 + 100 * i for i in range(2000)]
    ids = {forced_id("ZTF20aabaesm", pid) for pid in pids}
    assert len(ids) == len(pids)
    assert all(0 < i < 2**63 for i in ids)
    assert forced_id("ZTF20aabaesm", pids[0]) == forced_id("ZTF20aabaesm", pids[0])
    # One image, two objects: the pid alone would collide.
    assert forced_id("ZTF20aabaesm", pids[0]) != forced_id("ZTF20aabaesn", pids[0])


# ---- impossible alerts --------------------------------------------------------------------


@pytest.fixture
def moot() -> dict[str, Any]:
    _, record, _ = _decoded(MOOT)
    return copy.deepcopy(record)


def _reason(record: dict[str, Any]) -> str:
    with pytest.raises(InvalidAlertError) as caught:
        from_ztf(record)
    assert isinstance(caught.value, PermanentError)
    return caught.value.reason


@pytest.mark.parametrize(
    ("field", "value"), [("ra", math.nan), ("dec", math.nan), ("dec", 90.5), ("dec", -91.0),
                         ("ra", 360.5), ("ra", -1.0)]
)
def test_bad_coordinates(moot: dict[str, Any], field: str, value: float) -> None:
    moot["candidate"][field] = value
    assert _reason(moot) == "bad_coordinates"


def test_bad_coordinates_in_history(moot: dict[str, Any]) -> None:
    detected = next(p for p in moot["prv_candidates"] if p["candid"] is not None)
    detected["dec"] = 91.0
    assert _reason(moot) == "bad_coordinates"


def test_non_detection_without_coordinates_is_fine(moot: dict[str, Any]) -> None:
    limits = [p for p in moot["prv_candidates"] if p["candid"] is None]
    assert limits
    assert all(p["ra"] is None for p in limits)
    assert from_ztf(moot).object_id == "ZTF18abmmoot"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda r: r.update(objectId=None), "missing_id"),
        (lambda r: r.update(objectId=""), "missing_id"),
        (lambda r: r["candidate"].update(candid=None), "missing_id"),
        (lambda r: r.update(candidate=None), "missing_field"),
        (lambda r: r["candidate"].update(magpsf=None), "missing_field"),
        (lambda r: r["candidate"].pop("jd"), "missing_field"),
        (lambda r: r["candidate"].update(jd=math.nan), "bad_time"),
        (lambda r: r["candidate"].update(fid=4), "bad_band"),
        (lambda r: r["candidate"].update(isdiffpos="x"), "bad_sign"),
        (lambda r: r["candidate"].update(isdiffpos=None), "bad_sign"),
        (lambda r: r["candidate"].update(sigmapsf=-0.1), "negative_error"),
        (lambda r: r["candidate"].update(magpsf=math.nan), "nan_value"),
        (lambda r: r.update(candid=1628364324215010018), "inconsistent_ids"),
    ],
)
def test_impossible_values_raise_with_reason(moot: dict[str, Any], edit: Any,
                                             reason: str) -> None:
    edit(moot)
    assert _reason(moot) == reason


def test_bad_forced_band_raises(moot: dict[str, Any]) -> None:
    moot["fp_hists"] = [_fp(1622383694215, 2459376.88, 12.0, fid=7)]
    assert _reason(moot) == "bad_band"


# ---- the container layer ------------------------------------------------------------------


def test_is_container() -> None:
    assert is_container(MOOT.read_bytes())
    assert not is_container(b"\x00\x00\x00\x04M")
    assert not is_container(b"")


@pytest.mark.parametrize(
    "data", [b"not an avro container at all", b"\x00\x00\x00\x04M\x02\x04", b"OBJ\x01xxxx"]
)
def test_not_a_container(data: bytes) -> None:
    with pytest.raises(NotAContainerError) as caught:
        decode_container(data)
    assert isinstance(caught.value, CorruptBodyError)
    assert isinstance(caught.value, WireFormatError)
    assert caught.value.reason == "not_avro_container"


def test_truncated_containers() -> None:
    data = MOOT.read_bytes()
    cuts = [0, 2, 3, 4, 10, 100, 5000, len(data) // 2, len(data) - 100, len(data) - 17,
            len(data) - 16, len(data) - 1]
    for cut in cuts:
        with pytest.raises(TruncatedMessageError):
            decode_container(data[:cut])


def test_corrupt_containers() -> None:
    data = MOOT.read_bytes()
    # Garbage right after the magic: the header metadata cannot be read.
    with pytest.raises(CorruptBodyError):
        decode_container(b"Obj\x01" + b"\xff" * 2000 + data[4:])
    # A broken sync marker after the single block.
    broken = data[:-16] + bytes(b ^ 0xFF for b in data[-16:])
    with pytest.raises(CorruptBodyError):
        decode_container(broken)
    # Extra bytes after the last sync marker that are no block.
    with pytest.raises((CorruptBodyError, TruncatedMessageError)):
        decode_container(data + b"\x02\x10garbage-garbage-garbage")


def _container(schema: dict[str, Any], records: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(schema), records)
    return buffer.getvalue()


def test_container_with_no_or_two_records() -> None:
    reader = fastavro.reader(io.BytesIO(MOOT.read_bytes()))
    schema = reader.writer_schema
    record = next(reader)
    with pytest.raises(CorruptBodyError, match="no record"):
        decode_container(_container(schema, []))
    with pytest.raises(CorruptBodyError, match="2 records"):
        decode_container(_container(schema, [record, record]))
    schema_back, records = read_container(_container(schema, [record, record]))
    assert schema_back["name"] == "ztf.alert"
    assert len(records) == 2


def test_rubin_container_is_not_a_ztf_alert() -> None:
    data = rubin_sample_alert("11.1").read_bytes()
    assert is_container(data)
    with pytest.raises(CorruptBodyError, match="not a ZTF alert"):
        decode_container(data)


def test_reencoded_edited_record_round_trips() -> None:
    # A record edited and written back (as a test of a malformed-but-decodable packet would
    # do) decodes to the same normalised alert, apart from the edit.
    reader = fastavro.reader(io.BytesIO(MOOT.read_bytes()))
    schema = reader.writer_schema
    record = next(reader)
    record["candidate"]["dec"] = 95.0
    version, back = decode_container(_container(schema, [record]))
    assert version == "3.3"
    assert back["candidate"]["dec"] == pytest.approx(95.0)
    with pytest.raises(InvalidAlertError) as caught:
        from_ztf(back)
    assert caught.value.reason == "bad_coordinates"
