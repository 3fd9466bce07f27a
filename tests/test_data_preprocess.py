"""End-to-end preparation: vocabularies, OOV and missing ids, malformed rows, splits, cache and samples."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import fedshaver.data.preprocess as preprocess
from fedshaver.data.dataset import REPORT_FILE, load_prepared
from fedshaver.data.feature_map import FeatureMap
from fedshaver.data.formats import AVAZU
from fedshaver.data.preprocess import prepare_dataset
from fedshaver.data.splits import SPLIT_NAMES, SplitAssigner
from fedshaver.errors import ConfigError, DataNotFoundError, MalformedRowError, UnknownFieldError

from conftest import AVAZU_SAMPLES, CRITEO_SAMPLE, external_data

ALL_TRAIN = (1.0, 0.0, 0.0)
C1 = 13  # field index of C1 in the Criteo field order I1..I13, C1..C26


def criteo_line(label: str = "0", ints: dict[int, str] | None = None, cats: dict[int, str] | None = None) -> str:
    """Return one Criteo-format line; integer and categorical fields not given are blank."""
    ints = ints or {}
    cats = cats or {}
    values = [label] + [ints.get(i, "") for i in range(1, 14)] + [cats.get(i, "") for i in range(1, 27)]
    return "\t".join(values)


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def prepare(files, cache, data_format="criteo", **options):
    return prepare_dataset(files, data_format, cache, progress=False, **options)


def assert_same_arrays(first, second):
    for name in SPLIT_NAMES:
        assert np.array_equal(first.splits[name].x, second.splits[name].x), name
        assert np.array_equal(first.splits[name].y, second.splits[name].y), name


@pytest.fixture(scope="module")
def criteo_prepared(cache_dir):
    """The committed Criteo sample with the default options (min_count 10, 80/10/10, seed 2025)."""
    return prepare([CRITEO_SAMPLE], cache_dir)


@pytest.fixture(scope="module")
def avazu_prepared(cache_dir):
    """The two committed Avazu files as one stream, with device_ip and site_id hashes."""
    return prepare(AVAZU_SAMPLES, cache_dir, data_format="avazu", key_fields=["device_ip", "site_id"])


@pytest.fixture(scope="module")
def criteo_head700(tmp_path_factory):
    """The first 700 lines of the committed Criteo sample, as a file of its own."""
    path = tmp_path_factory.mktemp("head") / "criteo_head700.txt"
    with CRITEO_SAMPLE.open("rb") as source:
        path.write_bytes(b"".join(source.readline() for _ in range(700)))
    return path


# --- numeric buckets and missing values ---------------------------------------------------------

# I1 value of each row and the global id it must get. I1 is field 0, so its offset is 0. With
# min_count 1 the tokens are ordered by count, then by token: "log2:10" (1000 twice), "log2:2" (3 and
# 4), then "-1", "-3", "0", "1" and "2" (once each). They get the ids 2..8, after OOV (0) and missing (1).
I1_ROWS = [("-3", 5), ("-1", 4), ("0", 6), ("1", 7), ("2", 8), ("3", 3), ("1000", 2), ("", 1), ("4", 3), ("1000", 2)]


def test_prepare_numeric_bucket_ids(tmp_path):
    path = write_lines(tmp_path / "ints.txt", [criteo_line(ints={1: raw}) for raw, _ in I1_ROWS])
    dataset = prepare([path], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN)
    assert dataset.train.x[:, 0].tolist() == [expected for _, expected in I1_ROWS]


def test_prepare_numeric_bucket_vocabulary(tmp_path):
    path = write_lines(tmp_path / "ints.txt", [criteo_line(ints={1: raw}) for raw, _ in I1_ROWS])
    info = prepare([path], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN).feature_map.fields[0]
    assert info.tokens == ["log2:10", "log2:2", "-1", "-3", "0", "1", "2"]
    assert info.counts == [0, 1, 2, 2, 1, 1, 1, 1, 1]
    assert info.kind == "numeric"


def test_prepare_blank_is_missing_id(tmp_path):
    path = write_lines(tmp_path / "ints.txt", [criteo_line(ints={1: raw}) for raw, _ in I1_ROWS])
    dataset = prepare([path], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN)
    ids = dict(zip([raw for raw, _ in I1_ROWS], dataset.train.x[:, 0].tolist()))
    info = dataset.feature_map.fields[0]
    assert ids[""] == info.missing_id
    assert ids[""] not in {ids["0"], ids["-1"], ids["-3"]}


def test_prepare_rejects_non_integer(tmp_path):
    path = write_lines(tmp_path / "float.txt", [criteo_line(ints={2: "7"}), criteo_line(ints={2: "1.5"})])
    with pytest.raises(MalformedRowError, match="field 'I2'"):
        prepare([path], tmp_path / "cache", min_count=1)


# --- OOV and training-split counts ---------------------------------------------------------------

OOV_ROWS = 40
OOV_FRACTIONS = (0.5, 0.25, 0.25)  # 20 / 10 / 10 rows
OOV_SEED = 7
# C1 values of the 20 training rows, in stream order. With min_count 3, "aa" (8) and "bb" (5) are
# kept. "cc" (2) and "dd" (1) are rare, so the OOV count is 3. The 4 blanks are the missing count.
TRAIN_C1 = ["aa"] * 8 + ["bb"] * 5 + ["cc"] * 2 + ["dd"] + [""] * 4
# C1 values of the 20 held-out rows, cycled. If held-out rows were counted, "cc" would reach 7 and be
# kept and "aa" would reach 13.
HELD_OUT_C1 = ["zz", "aa", "cc", "ee"]


@pytest.fixture(scope="module")
def oov_dataset(tmp_path_factory):
    """40 synthetic rows whose C1 values depend on the split each row is assigned to."""
    folder = tmp_path_factory.mktemp("oov")
    labels = SplitAssigner(OOV_ROWS, OOV_FRACTIONS, OOV_SEED).take(OOV_ROWS)
    train_values = iter(TRAIN_C1)
    lines, held_out = [], []
    for row, split in enumerate(labels):
        if split == 0:
            value = next(train_values)
        else:
            value = HELD_OUT_C1[len(held_out) % len(HELD_OUT_C1)]
            held_out.append((int(split), value))
        lines.append(criteo_line(label=str(row % 2), cats={1: value}))
    path = write_lines(folder / "oov.txt", lines)
    dataset = prepare([path], folder / "cache", min_count=3, split_fractions=OOV_FRACTIONS, seed=OOV_SEED)
    return dataset, held_out


def test_oov_split_rows(oov_dataset):
    dataset, _ = oov_dataset
    assert dataset.feature_map.split_rows == {"train": 20, "valid": 10, "test": 10}


def test_oov_kept_tokens(oov_dataset):
    dataset, _ = oov_dataset
    assert dataset.feature_map.fields[C1].tokens == ["aa", "bb"]


def test_oov_counts_are_training_counts(oov_dataset):
    # OOV = 2 (cc) + 1 (dd), missing = 4 blanks, then aa 8 and bb 5.
    dataset, _ = oov_dataset
    assert dataset.feature_map.fields[C1].counts == [3, 4, 8, 5]


def test_oov_rare_training_tokens(oov_dataset):
    dataset, _ = oov_dataset
    info = dataset.feature_map.fields[C1]
    train_ids = dataset.train.x[:, C1].tolist()
    expected = [info.offset + 2] * 8 + [info.offset + 3] * 5 + [info.oov_id] * 3 + [info.missing_id] * 4
    assert train_ids == expected


def test_oov_unseen_tokens_held_out(oov_dataset):
    # zz and ee never occur in training rows, cc is rare there: all three share the OOV id.
    dataset, held_out = oov_dataset
    info = dataset.feature_map.fields[C1]
    ids = {"zz": info.oov_id, "cc": info.oov_id, "ee": info.oov_id, "aa": info.offset + 2}
    for split, name in ((1, "valid"), (2, "test")):
        expected = [ids[value] for s, value in held_out if s == split]
        assert dataset.splits[name].x[:, C1].tolist() == expected, name


def test_oov_blank_fields_all_missing(oov_dataset):
    # C2 is blank in every row: its 20 training rows are all counted as missing.
    dataset, _ = oov_dataset
    info = dataset.feature_map.fields[C1 + 1]
    assert info.counts == [0, 20]
    assert set(dataset.test.x[:, C1 + 1].tolist()) == {info.missing_id}


# --- malformed rows ------------------------------------------------------------------------------

GOOD = criteo_line(label="1", ints={1: "5"}, cats={1: "ab"})
SHORT = GOOD.rsplit("\t", 1)[0]  # 39 fields
BAD_INTEGER = criteo_line(ints={3: "1.5"})
BAD_LABEL = criteo_line(label="2", ints={1: "5"})

MALFORMED_CASES = {
    # name: (bad line, its 1-based line number, quoted value, text of the reason)
    "field_count": (SHORT, 3, SHORT, "expected 40 fields, found 39"),
    "integer": (BAD_INTEGER, 4, "1.5", "field 'I3'"),
    "label": (BAD_LABEL, 2, "2", "label must be 0 or 1"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CASES))
def test_malformed_row_raises(tmp_path, case):
    line, number, value, reason = MALFORMED_CASES[case]
    lines = [GOOD] * 6
    lines[number - 1] = line
    path = write_lines(tmp_path / "bad.txt", lines)
    with pytest.raises(MalformedRowError) as caught:
        prepare([path], tmp_path / "cache", min_count=1)
    message = str(caught.value)
    assert str(path) in message
    assert f", line {number}" in message
    assert repr(value) in message
    assert reason in message
    assert caught.value.line == number


@pytest.mark.parametrize("case", sorted(MALFORMED_CASES))
def test_malformed_row_leaves_no_folder(tmp_path, case):
    line, number, _, _ = MALFORMED_CASES[case]
    lines = [GOOD] * 6
    lines[number - 1] = line
    path = write_lines(tmp_path / "bad.txt", lines)
    cache = tmp_path / "cache"
    with pytest.raises(MalformedRowError):
        prepare([path], cache, min_count=1)
    assert list(cache.iterdir()) == []


def test_late_failure_leaves_no_folder(tmp_path, monkeypatch):
    # A failure after the encoding pass has written the split arrays removes them too.
    path = write_lines(tmp_path / "good.txt", [GOOD] * 5)

    def fail(self, target):
        raise RuntimeError("saving failed")

    monkeypatch.setattr(FeatureMap, "save", fail)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="saving failed"):
        prepare([path], cache, min_count=1)
    assert list(cache.iterdir()) == []


def skip_file(tmp_path):
    """10 good rows with a bad label on line 2, a short row on line 5 and a bad integer on line 9."""
    lines = [GOOD] * 13
    lines[1], lines[4], lines[8] = BAD_LABEL, SHORT, BAD_INTEGER
    return write_lines(tmp_path / "skip.txt", lines)


def test_skip_drops_bad_rows(tmp_path):
    dataset = prepare([skip_file(tmp_path)], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN, on_bad_rows="skip")
    assert len(dataset.train) == 10
    assert dataset.report["data_lines"] == 13


def test_skip_report_counts(tmp_path):
    dataset = prepare([skip_file(tmp_path)], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN, on_bad_rows="skip")
    bad_rows = dataset.report["bad_rows"]
    assert bad_rows["skipped_rows"] == 3
    assert bad_rows["by_reason"] == {
        "label must be 0 or 1": 1,
        "expected 40 fields, found 39": 1,
        "expected an integer or a blank": 1,
    }
    assert sorted(example["line"] for example in bad_rows["examples"]) == [2, 5, 9]


def test_skip_report_file(tmp_path):
    dataset = prepare([skip_file(tmp_path)], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN, on_bad_rows="skip")
    report = json.loads((dataset.path / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["bad_rows"]["skipped_rows"] == 3


def test_skip_row_with_two_errors_counted_once(tmp_path):
    lines = [GOOD] * 4 + [criteo_line(label="x", ints={1: "1.5"})]
    path = write_lines(tmp_path / "double.txt", lines)
    dataset = prepare([path], tmp_path / "cache", min_count=1, split_fractions=ALL_TRAIN, on_bad_rows="skip")
    assert dataset.report["bad_rows"]["skipped_rows"] == 1
    assert len(dataset.train) == 4


def test_skip_chunk_of_only_bad_rows(tmp_path):
    # With chunk_rows 1 every bad row is a chunk of its own; the result matches one large chunk.
    path = skip_file(tmp_path)
    options = {"min_count": 1, "split_fractions": (0.5, 0.25, 0.25), "on_bad_rows": "skip"}
    small = prepare([path], tmp_path / "one", chunk_rows=1, **options)
    large = prepare([path], tmp_path / "many", chunk_rows=50_000, **options)
    assert_same_arrays(small, large)


def test_prepare_invalid_bad_row_mode(tmp_path):
    path = write_lines(tmp_path / "good.txt", [GOOD] * 3)
    with pytest.raises(ConfigError, match="on_bad_rows"):
        prepare([path], tmp_path / "cache", on_bad_rows="ignore")


def test_prepare_unknown_key_field(tmp_path):
    path = write_lines(tmp_path / "good.txt", [GOOD] * 3)
    with pytest.raises(UnknownFieldError, match="key field 'device_ip'"):
        prepare([path], tmp_path / "cache", key_fields=["device_ip"])


def test_prepare_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="data file not found"):
        prepare([tmp_path / "absent.txt"], tmp_path / "cache")


def test_prepare_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataNotFoundError, match="no data rows"):
        prepare([path], tmp_path / "cache")


# --- committed Criteo sample ---------------------------------------------------------------------


def test_criteo_sample_rows(criteo_prepared):
    assert sum(len(split) for split in criteo_prepared.splits.values()) == 10_000


def test_criteo_sample_split_sizes(criteo_prepared):
    sizes = {name: len(split) for name, split in criteo_prepared.splits.items()}
    assert sizes == {"train": 8_000, "valid": 1_000, "test": 1_000}


def test_criteo_sample_clicks(criteo_prepared):
    assert sum(split.positives for split in criteo_prepared.splits.values()) == 2_182


def test_criteo_sample_report_clicks(criteo_prepared):
    assert sum(criteo_prepared.report["positives"].values()) == 2_182


def test_criteo_sample_fields(criteo_prepared):
    assert criteo_prepared.feature_map.num_fields == 39
    assert criteo_prepared.train.x.shape == (8_000, 39)
    assert criteo_prepared.train.x.dtype == np.int32


def test_criteo_sample_ids_inside_fields(criteo_prepared):
    offsets = criteo_prepared.feature_map.offsets
    for name, split in criteo_prepared.splits.items():
        x = np.asarray(split.x)
        assert np.all(x >= offsets[:-1]), name
        assert np.all(x < offsets[1:]), name


def test_criteo_sample_frequencies_match_train(criteo_prepared):
    # Every training row adds one count per field, so the training ids' histogram is the frequencies.
    feature_map = criteo_prepared.feature_map
    histogram = np.bincount(np.asarray(criteo_prepared.train.x).ravel(), minlength=feature_map.num_features)
    assert np.array_equal(histogram, feature_map.frequencies())


def test_criteo_sample_kept_tokens_reach_min_count(criteo_prepared):
    for info in criteo_prepared.feature_map.fields:
        assert min(info.counts[2:], default=10) >= 10, info.name


def test_criteo_sample_map_round_trip(criteo_prepared):
    feature_map = criteo_prepared.feature_map
    assert FeatureMap.from_dict(feature_map.to_dict()) == feature_map


# --- determinism, chunking and compression -------------------------------------------------------


def test_chunk_rows_do_not_change_output(criteo_head700, tmp_path):
    small = prepare([criteo_head700], tmp_path / "small", min_count=2, chunk_rows=7)
    large = prepare([criteo_head700], tmp_path / "large", min_count=2, chunk_rows=50_000)
    assert_same_arrays(small, large)
    assert small.feature_map == large.feature_map


def test_same_seed_same_output(criteo_head700, tmp_path):
    first = prepare([criteo_head700], tmp_path / "first", min_count=2, seed=3)
    second = prepare([criteo_head700], tmp_path / "second", min_count=2, seed=3)
    assert_same_arrays(first, second)


def test_other_seed_other_split(criteo_head700, tmp_path):
    first = prepare([criteo_head700], tmp_path / "first", min_count=2, seed=3)
    second = prepare([criteo_head700], tmp_path / "second", min_count=2, seed=4)
    assert len(first.train) == len(second.train)
    assert not np.array_equal(first.train.x, second.train.x)


def test_split_follows_assigner(criteo_head700, tmp_path):
    # Rows land in the split that SplitAssigner gives their line, in file order.
    dataset = prepare([criteo_head700], tmp_path / "cache", min_count=2, seed=3)
    labels = SplitAssigner(700, (0.8, 0.1, 0.1), 3).take(700)
    raw_labels = np.array([float(line.split(b"\t", 1)[0]) for line in criteo_head700.read_bytes().splitlines()])
    for index, name in enumerate(SPLIT_NAMES):
        assert np.array_equal(dataset.splits[name].y, raw_labels[labels == index]), name


def test_gzip_matches_plain(criteo_prepared, tmp_path):
    compressed = tmp_path / "criteo_train_head10k.txt.gz"
    with CRITEO_SAMPLE.open("rb") as source, gzip.open(compressed, "wb") as target:
        shutil.copyfileobj(source, target)
    dataset = prepare([compressed], tmp_path / "cache")
    assert_same_arrays(dataset, criteo_prepared)
    assert dataset.feature_map.fields == criteo_prepared.feature_map.fields


# --- cache ---------------------------------------------------------------------------------------


def fail_to_parse(*args, **kwargs):
    raise AssertionError("the raw files were parsed although a cached result exists")


def test_cache_reused_without_parsing(criteo_prepared, cache_dir, monkeypatch):
    monkeypatch.setattr(preprocess, "iter_raw_chunks", fail_to_parse)
    again = prepare([CRITEO_SAMPLE], cache_dir)
    assert again.path == criteo_prepared.path
    assert np.array_equal(again.train.x, criteo_prepared.train.x)


def test_cache_force_parses_again(criteo_prepared, cache_dir, monkeypatch):
    monkeypatch.setattr(preprocess, "iter_raw_chunks", fail_to_parse)
    with pytest.raises(AssertionError, match="were parsed"):
        prepare([CRITEO_SAMPLE], cache_dir, force=True)
    # The failed run leaves the cached result in place.
    assert len(load_prepared(criteo_prepared.path).train) == 8_000


def test_cache_new_folder_for_min_count(tmp_path):
    path = write_lines(tmp_path / "good.txt", [GOOD] * 5)
    first = prepare([path], tmp_path / "cache", min_count=1)
    second = prepare([path], tmp_path / "cache", min_count=2)
    assert first.path != second.path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.path.name, second.path.name])


def test_cache_new_folder_for_changed_file(tmp_path):
    path = write_lines(tmp_path / "good.txt", [GOOD] * 5)
    first = prepare([path], tmp_path / "cache", min_count=1)
    write_lines(path, [GOOD] * 6)
    second = prepare([path], tmp_path / "cache", min_count=1)
    assert first.path != second.path
    assert len(second.train) + len(second.valid) + len(second.test) == 6


def test_cache_other_process_finished_first(tmp_path, monkeypatch):
    # Another process renames the same result into place just before this one does.
    path = write_lines(tmp_path / "good.txt", [GOOD] * 5)
    cache = tmp_path / "cache"
    first = prepare([path], cache, min_count=1)
    backup = shutil.copytree(first.path, tmp_path / "backup")
    real_replace = os.replace

    def replace_after_other_process(source, target):
        if target == first.path:
            shutil.copytree(backup, target)
        real_replace(source, target)

    monkeypatch.setattr(preprocess.os, "replace", replace_after_other_process)
    second = prepare([path], cache, min_count=1, force=True)
    assert second.path == first.path
    assert [p.name for p in cache.iterdir()] == [first.path.name]


def test_cache_ignores_chunk_rows(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "good.txt", [GOOD] * 5)
    first = prepare([path], tmp_path / "cache", min_count=1, chunk_rows=2)
    monkeypatch.setattr(preprocess, "iter_raw_chunks", fail_to_parse)
    second = prepare([path], tmp_path / "cache", min_count=1, chunk_rows=3)
    assert second.path == first.path


# --- Avazu ---------------------------------------------------------------------------------------


def read_avazu_raw() -> pd.DataFrame:
    """Read the two committed Avazu files with pandas, independently of fedshaver's reader."""
    part1 = pd.read_csv(AVAZU_SAMPLES[0], dtype=str, keep_default_na=False)
    part2 = pd.read_csv(AVAZU_SAMPLES[1], dtype=str, keep_default_na=False, header=None, names=list(AVAZU.columns))
    return pd.concat([part1, part2], ignore_index=True)


def test_avazu_rows(avazu_prepared):
    assert sum(len(split) for split in avazu_prepared.splits.values()) == 9_999


def test_avazu_clicks(avazu_prepared):
    # 1,563 clicks in part1 and 143 in part2.
    assert sum(split.positives for split in avazu_prepared.splits.values()) == 1_706


def test_avazu_fields(avazu_prepared):
    names = avazu_prepared.feature_map.field_names
    assert len(names) == 23
    assert names[:3] == ["hour", "weekday", "C1"]
    assert "id" not in names
    assert "click" not in names


def test_avazu_hour_of_day(avazu_prepared):
    # Every sample row is from 14102100: hour of day "00".
    info = avazu_prepared.feature_map.fields[0]
    assert info.tokens == ["00"]
    assert info.counts == [0, 0, len(avazu_prepared.train)]


def test_avazu_weekday(avazu_prepared):
    # 14102100 is 2014-10-21, a Tuesday.
    info = avazu_prepared.feature_map.fields[1]
    assert info.tokens == ["Tue"]
    assert set(avazu_prepared.test.x[:, 1].tolist()) == {info.offset + 2}


def test_avazu_labels_follow_stream(avazu_prepared):
    # The header of part1 is skipped and part2 continues the stream, so labels line up with the raw rows.
    raw = read_avazu_raw()
    labels = SplitAssigner(len(raw), (0.8, 0.1, 0.1), 2025).take(len(raw))
    clicks = raw["click"].astype(np.float32).to_numpy()
    for index, name in enumerate(SPLIT_NAMES):
        assert np.array_equal(avazu_prepared.splits[name].y, clicks[labels == index]), name


def test_avazu_key_fields_stored(avazu_prepared):
    assert avazu_prepared.key_fields == ["device_ip", "site_id"]
    assert avazu_prepared.train.keys.shape == (len(avazu_prepared.train), 2)
    assert avazu_prepared.train.keys.dtype == np.uint64


@pytest.mark.parametrize(("column", "key_index"), [("device_ip", 0), ("site_id", 1)])
def test_avazu_key_hashes_match_values(avazu_prepared, column, key_index):
    # Identical raw values share a hash, and distinct raw values get distinct hashes.
    raw = read_avazu_raw()
    labels = SplitAssigner(len(raw), (0.8, 0.1, 0.1), 2025).take(len(raw))
    values = np.concatenate([raw[column].to_numpy()[labels == index] for index in range(len(SPLIT_NAMES))])
    hashes = np.concatenate([avazu_prepared.splits[name].keys[:, key_index] for name in SPLIT_NAMES])
    pairs = pd.DataFrame({"value": values, "hash": hashes})
    assert pairs.groupby("value")["hash"].nunique().max() == 1
    assert pairs["hash"].nunique() == pairs["value"].nunique()


def test_avazu_header_differs_rejected(tmp_path):
    header = ",".join(AVAZU.columns).replace("device_ip", "ip")
    body = AVAZU_SAMPLES[0].read_text(encoding="latin-1").split("\n", 1)[1]
    path = tmp_path / "renamed.csv"
    path.write_text(header + "\n" + body, encoding="latin-1")
    with pytest.raises(MalformedRowError, match="header differs from the avazu header"):
        prepare([path], tmp_path / "cache", data_format="avazu")
    assert list((tmp_path / "cache").iterdir()) == []


def test_avazu_bad_row_line_in_second_file(tmp_path):
    # part2 has no header, so its third row is its line 3.
    rows = AVAZU_SAMPLES[1].read_text(encoding="latin-1").splitlines()[:5]
    rows[2] = rows[2].replace(",14102100,", ",14102199,", 1)
    part2 = write_lines(tmp_path / "part2.csv", rows)
    with pytest.raises(MalformedRowError, match="line 3, field 'hour'") as caught:
        prepare([AVAZU_SAMPLES[0], part2], tmp_path / "cache", data_format="avazu")
    assert caught.value.path == part2


# --- 137k-row sample outside the repository ------------------------------------------------------


def test_criteo_137k_sample(cache_dir):
    path = external_data("criteo/criteo_kaggle_sample137k.tsv.gz")
    dataset = prepare([path], cache_dir)
    sizes = {name: len(split) for name, split in dataset.splits.items()}
    assert sum(sizes.values()) == 137_139
    assert sizes == {"train": 109_711, "valid": 13_713, "test": 13_715}
    assert sum(split.positives for split in dataset.splits.values()) == 35_213
    assert dataset.feature_map.num_fields == 39
    assert dataset.report["bad_rows"]["skipped_rows"] == 0


def test_report_distinct_tokens(oov_dataset):
    # C1 takes aa, bb, cc, dd and the blank in training rows, plus zz and ee in held-out rows: 7 values.
    dataset, _ = oov_dataset
    assert dataset.report["distinct_tokens"]["C1"] == 7
    assert dataset.report["distinct_tokens"]["C2"] == 1


def test_blank_lines_are_passed_over(tmp_path):
    # Two valid Criteo rows with an empty line between them and one at the end.
    row = "\t".join(["1"] + ["5"] * 13 + ["ab"] * 26)
    path = tmp_path / "blank.txt"
    path.write_text(f"{row}\n\n{row}\n\n")
    dataset = prepare_dataset([path], "criteo", tmp_path / "cache", split_fractions=[1.0, 0.0, 0.0], progress=False)
    assert len(dataset.train) == 2
    assert dataset.report["bad_rows"]["blank_lines"] == 2
    assert dataset.report["bad_rows"]["skipped_rows"] == 0


def test_truncated_gzip_is_a_named_error(tmp_path):
    import gzip

    from fedshaver.errors import DataFileError

    complete = gzip.compress(CRITEO_SAMPLE.read_bytes())
    path = tmp_path / "truncated.txt.gz"
    path.write_bytes(complete[: len(complete) // 3])
    with pytest.raises(DataFileError, match="truncated.txt.gz.*truncated or corrupt"):
        prepare_dataset([path], "criteo", tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
