"""Raw formats and readers: numeric bucketing, Avazu hour tokens, headers, line counts and chunking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedshaver.data.formats import (
    AVAZU,
    CRITEO,
    MISSING_TOKEN,
    BadRowPolicy,
    RawChunk,
    bucket_integer,
    bucket_numeric_token,
    get_format,
)
from fedshaver.data.readers import count_data_rows, iter_raw_chunks
from fedshaver.errors import ConfigError, MalformedRowError

from conftest import AVAZU_SAMPLES, CRITEO_SAMPLE

AVAZU_HEADER = ",".join(AVAZU.columns)


def avazu_line(row_id: str, click: str = "0", hour: str = "14102100", site_id: str = "s1") -> str:
    """Return one Avazu-format line; every column not given is ``"1"``."""
    values = {column: "1" for column in AVAZU.columns}
    values.update({"id": row_id, "click": click, "hour": hour, "site_id": site_id})
    return ",".join(values[column] for column in AVAZU.columns)


def raw_chunk(data_format, rows: list[dict[str, str]], path="memory.txt") -> RawChunk:
    """Build a raw chunk from column dicts; missing columns are blank and lines count from 1."""
    frame = pd.DataFrame([{column: row.get(column, "") for column in data_format.columns} for row in rows], dtype=object)
    return RawChunk(path=path, frame=frame, lines=np.arange(1, len(rows) + 1))


# --- numeric bucketing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        ("-3", "-3"),
        ("-1", "-1"),
        ("0", "0"),
        ("1", "1"),
        ("2", "2"),
        ("3", "log2:2"),  # ceil(log2 3) = ceil(1.58) = 2
        ("4", "log2:2"),  # log2 4 = 2 exactly
        ("5", "log2:3"),  # ceil(log2 5) = ceil(2.32) = 3
        ("1000", "log2:10"),  # 2**9 = 512 < 1000 <= 1024 = 2**10
        ("1024", "log2:10"),
        ("1025", "log2:11"),
        ("+7", "log2:3"),  # a sign is part of an integer: 4 < 7 <= 8
        (" 12 ", "log2:4"),  # surrounding spaces are ignored: 8 < 12 <= 16
        ("007", "log2:3"),  # leading zeros do not make a new token
        ("", MISSING_TOKEN),
        ("   ", MISSING_TOKEN),
    ],
)
def test_bucket_numeric_token_values(raw, token):
    assert bucket_numeric_token(raw) == token


def test_bucket_missing_differs_from_small_values():
    missing = bucket_numeric_token("")
    assert missing not in {bucket_numeric_token(v) for v in ("-3", "-1", "0", "1", "2")}


@pytest.mark.parametrize("raw", ["1.5", "abc", "1e3", "0x10", "--1", "1 2", "nan"])
def test_bucket_numeric_token_rejects_non_integers(raw):
    assert bucket_numeric_token(raw) is None


def test_bucket_integer_large_power_of_two():
    # float log2 of 2**60 + 1 rounds to exactly 60.0; the bucket must still be 61.
    assert bucket_integer(2**60 + 1) == "log2:61"


# --- formats ------------------------------------------------------------------------------------


def test_get_format_unknown_name():
    with pytest.raises(ConfigError, match="unknown data format 'movielens'"):
        get_format("movielens")


def test_criteo_format_has_39_fields():
    assert len(CRITEO.fields) == 39


def test_criteo_format_numeric_fields():
    assert sorted(CRITEO.numeric_fields) == sorted(f"I{i}" for i in range(1, 14))


def test_avazu_format_fields():
    # id is dropped, click is the label, hour becomes hour of day plus weekday: 24 - 2 + 1 = 23 fields.
    expected = ["hour", "weekday"] + list(AVAZU.columns[3:])
    assert list(AVAZU.fields) == expected
    assert len(AVAZU.fields) == 23


def test_bad_row_policy_unknown_mode():
    with pytest.raises(ConfigError, match="on_bad_rows must be 'raise' or 'skip'"):
        BadRowPolicy("ignore")


def test_tokenize_avazu_hour_and_weekday():
    # 14102100 is 2014-10-21 00:00 (a Tuesday); 14102623 is 2014-10-26 23:00 (a Sunday).
    chunk = raw_chunk(AVAZU, [{"click": "0", "hour": "14102100"}, {"click": "1", "hour": "14102623"}])
    tokens = AVAZU.tokenize(chunk, BadRowPolicy())
    assert tokens.tokens["hour"].tolist() == ["00", "23"]
    assert tokens.tokens["weekday"].tolist() == ["Tue", "Sun"]
    assert tokens.labels.tolist() == [0.0, 1.0]


def test_tokenize_avazu_drops_id():
    chunk = raw_chunk(AVAZU, [{"id": "42", "click": "0", "hour": "14102100"}])
    tokens = AVAZU.tokenize(chunk, BadRowPolicy())
    assert "id" not in tokens.tokens


@pytest.mark.parametrize("hour", ["14132100", "14102124", "1410210", "1410210x", "14023000"])
def test_tokenize_avazu_invalid_hour(hour):
    chunk = raw_chunk(AVAZU, [{"click": "0", "hour": "14102100"}, {"click": "0", "hour": hour}])
    with pytest.raises(MalformedRowError) as caught:
        AVAZU.tokenize(chunk, BadRowPolicy())
    assert caught.value.line == 2
    assert caught.value.field == "hour"
    assert caught.value.value == hour


def test_tokenize_criteo_numeric_and_blank():
    chunk = raw_chunk(CRITEO, [{"label": "1", "I1": "1000", "C1": "ab"}, {"label": "0", "I1": "", "C1": ""}])
    tokens = CRITEO.tokenize(chunk, BadRowPolicy())
    assert tokens.tokens["I1"].tolist() == ["log2:10", MISSING_TOKEN]
    assert tokens.tokens["C1"].tolist() == ["ab", MISSING_TOKEN]
    assert tokens.valid.tolist() == [True, True]


def test_tokenize_skip_counts_row_once():
    # Row 2 has a bad label and a bad integer; it is one skipped row, reported with the label reason.
    chunk = raw_chunk(CRITEO, [{"label": "0", "I1": "1"}, {"label": "x", "I1": "1.5", "I2": "abc"}])
    policy = BadRowPolicy("skip")
    tokens = CRITEO.tokenize(chunk, policy)
    assert tokens.valid.tolist() == [True, False]
    assert policy.skipped == 1
    assert policy.counts == {"label must be 0 or 1": 1}


def test_tokenize_raises_earliest_line():
    # The bad integer on line 2 comes before the bad label on line 3, so line 2 is reported.
    chunk = raw_chunk(CRITEO, [{"label": "0"}, {"label": "0", "I4": "1.5"}, {"label": "7"}])
    with pytest.raises(MalformedRowError) as caught:
        CRITEO.tokenize(chunk, BadRowPolicy())
    assert caught.value.line == 2


# --- readers ------------------------------------------------------------------------------------


def test_count_rows_criteo_sample():
    assert count_data_rows([CRITEO_SAMPLE], CRITEO) == 10_000


def test_count_rows_avazu_samples():
    # part1: header + 8,999 rows; part2: 1,000 rows without a header.
    assert count_data_rows(AVAZU_SAMPLES, AVAZU) == 9_999


def test_count_rows_without_final_newline(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(AVAZU_HEADER + "\n" + avazu_line("1") + "\n" + avazu_line("2"))
    assert count_data_rows([path], AVAZU) == 2


def test_iter_chunks_avazu_line_numbers():
    # part1 starts at line 2 (line 1 is the header), part2 at line 1.
    firsts = {}
    for chunk, _, _ in iter_raw_chunks(AVAZU_SAMPLES, AVAZU, 50_000, BadRowPolicy()):
        firsts[chunk.path.name] = int(chunk.lines[0])
    assert firsts == {"avazu_train_head_part1.csv": 2, "avazu_train_head_part2_noheader.csv": 1}


def test_iter_chunks_avazu_skips_header():
    labels = []
    for chunk, _, _ in iter_raw_chunks(AVAZU_SAMPLES, AVAZU, 4_000, BadRowPolicy()):
        labels.extend(chunk.frame["click"].tolist())
    assert len(labels) == 9_999
    assert "click" not in labels


def test_iter_chunks_sizes_cover_stream():
    consumed = [step for _, _, step in iter_raw_chunks([CRITEO_SAMPLE], CRITEO, 3_000, BadRowPolicy())]
    assert consumed == [3_000, 3_000, 3_000, 1_000]


def test_iter_chunks_crlf_line_ends(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes((AVAZU_HEADER + "\r\n" + avazu_line("1", site_id="abc") + "\r\n").encode())
    chunks = [chunk for chunk, _, _ in iter_raw_chunks([path], AVAZU, 10, BadRowPolicy())]
    assert chunks[0].frame["C21"].tolist() == ["1"]
    assert chunks[0].frame["site_id"].tolist() == ["abc"]


def test_iter_chunks_wrong_field_count(tmp_path):
    path = tmp_path / "short.csv"
    short = avazu_line("3").rsplit(",", 1)[0]  # 23 fields instead of 24
    path.write_text("\n".join([AVAZU_HEADER, avazu_line("1"), avazu_line("2"), short]) + "\n")
    with pytest.raises(MalformedRowError) as caught:
        list(iter_raw_chunks([path], AVAZU, 10, BadRowPolicy()))
    assert caught.value.line == 4
    assert "expected 24 fields, found 23" in str(caught.value)


def test_iter_chunks_skip_wrong_field_count(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("\n".join([avazu_line("1"), avazu_line("2") + ",extra", avazu_line("3")]) + "\n")
    policy = BadRowPolicy("skip")
    steps = list(iter_raw_chunks([path], AVAZU, 10, policy))
    chunk, positions, consumed = steps[0]
    assert chunk.frame["id"].tolist() == ["1", "3"]
    assert positions.tolist() == [0, 2]
    assert consumed == 3
    assert chunk.lines.tolist() == [1, 3]
    assert policy.skipped == 1


def test_avazu_header_differs(tmp_path):
    path = tmp_path / "renamed.csv"
    header = AVAZU_HEADER.replace("site_id", "site")
    path.write_text(header + "\n" + avazu_line("1") + "\n")
    with pytest.raises(MalformedRowError, match="header differs from the avazu header") as caught:
        count_data_rows([path], AVAZU)
    assert caught.value.line == 1


def test_avazu_header_missing_column(tmp_path):
    path = tmp_path / "short_header.csv"
    header = AVAZU_HEADER.rsplit(",", 1)[0]
    path.write_text(header + "\n" + avazu_line("1") + "\n")
    with pytest.raises(MalformedRowError, match="header differs"):
        list(iter_raw_chunks([path], AVAZU, 10, BadRowPolicy("skip")))


def test_iter_chunks_byte_order_mark_header(tmp_path):
    # A UTF-8 byte order mark before the header does not hide the header.
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (AVAZU_HEADER + "\n" + avazu_line("1") + "\n").encode())
    chunks = [chunk for chunk, _, _ in iter_raw_chunks([path], AVAZU, 10, BadRowPolicy())]
    assert chunks[0].frame["id"].tolist() == ["1"]
    assert chunks[0].lines.tolist() == [2]


def test_iter_chunks_byte_order_mark_criteo(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\t".join(["1"] + [""] * 39).encode() + b"\n")
    chunks = [chunk for chunk, _, _ in iter_raw_chunks([path], CRITEO, 10, BadRowPolicy())]
    assert chunks[0].frame["label"].tolist() == ["1"]


def test_iter_chunks_keeps_quotes(tmp_path):
    # Values are not quoted: a quote character stays part of the value.
    path = tmp_path / "quotes.csv"
    path.write_text(avazu_line("1", site_id='"a') + "\n")
    chunks = [chunk for chunk, _, _ in iter_raw_chunks([path], AVAZU, 10, BadRowPolicy())]
    assert chunks[0].frame["site_id"].tolist() == ['"a']
