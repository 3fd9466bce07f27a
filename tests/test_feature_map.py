"""Feature map: id layout, encoding, JSON round trip and rejection of inconsistent files."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from fedshaver.data.feature_map import FeatureMap, FieldInfo
from fedshaver.data.preprocess import build_field_info
from fedshaver.errors import FeatureMapError, UnknownFieldError


def small_map() -> FeatureMap:
    """Two fields: ``I1`` with 2 kept tokens (ids 0-3) and ``C1`` with 1 kept token (ids 4-6)."""
    return FeatureMap(
        dataset="criteo",
        fields=[
            FieldInfo(name="I1", kind="numeric", offset=0, tokens=["0", "log2:2"], counts=[3, 4, 9, 5]),
            FieldInfo(name="C1", kind="categorical", offset=4, tokens=["ab"], counts=[2, 0, 7]),
        ],
        min_count=5,
        split_rows={"train": 21, "valid": 3, "test": 3},
        source={"files": ["a.txt"], "seed": 1},
    )


# --- layout ------------------------------------------------------------------------------------


def test_map_num_features():
    assert small_map().num_features == 7


def test_map_offsets():
    assert small_map().offsets.tolist() == [0, 4, 7]


def test_map_feature_field():
    assert small_map().feature_field.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_map_frequencies():
    assert small_map().frequencies().tolist() == [3, 4, 9, 5, 2, 0, 7]


def test_field_reserved_ids():
    info = small_map().fields[1]
    assert info.oov_id == 4
    assert info.missing_id == 5


def test_field_index_known():
    assert small_map().field_index("C1") == 1


def test_field_index_unknown():
    with pytest.raises(UnknownFieldError, match="unknown field 'C9'"):
        small_map().field_index("C9")


# --- encoding ----------------------------------------------------------------------------------


def test_field_encode_tokens():
    # C1 starts at 4: OOV 4, missing 5, "ab" 6.
    info = small_map().fields[1]
    ids = info.encode(np.array(["ab", "", "zz", "ab"], dtype=object))
    assert ids.tolist() == [6, 5, 4, 6]


def test_field_encode_list():
    info = small_map().fields[1]
    assert info.encode(["ab", "", "zz"]).tolist() == [6, 5, 4]


def test_field_encode_empty_vocabulary():
    info = FieldInfo(name="C2", kind="categorical", offset=10, tokens=[], counts=[4, 1])
    assert info.encode(np.array(["a", ""], dtype=object)).tolist() == [10, 11]


def test_build_field_info_counts():
    # min_count 3: "a" (5) and "b" (3) kept, "c" and "d" (1 each) go to OOV, 2 blanks to missing.
    counter = {"a": 5, "b": 3, "c": 1, "d": 1, "": 2}
    info = build_field_info("C1", "categorical", 7, counter, min_count=3)
    assert info.tokens == ["a", "b"]
    assert info.counts == [2, 2, 5, 3]
    assert info.offset == 7


def test_build_field_info_tie_order():
    # Equal counts are ordered by token.
    info = build_field_info("C1", "categorical", 0, {"b": 4, "a": 4, "c": 9}, min_count=1)
    assert info.tokens == ["c", "a", "b"]


# --- round trip --------------------------------------------------------------------------------


def test_map_dict_round_trip():
    feature_map = small_map()
    assert FeatureMap.from_dict(feature_map.to_dict()) == feature_map


def test_map_file_round_trip(tmp_path):
    feature_map = small_map()
    feature_map.save(tmp_path / "feature_map.json")
    assert FeatureMap.load(tmp_path / "feature_map.json") == feature_map


def test_map_save_leaves_no_temporary(tmp_path):
    small_map().save(tmp_path / "feature_map.json")
    assert [p.name for p in tmp_path.iterdir()] == ["feature_map.json"]


def test_map_dict_lists_ids():
    entry = small_map().to_dict()["fields"][1]
    assert (entry["offset"], entry["vocab_size"], entry["oov_id"], entry["missing_id"]) == (4, 3, 4, 5)


def test_map_round_trip_encodes_equally():
    loaded = FeatureMap.from_dict(json.loads(json.dumps(small_map().to_dict())))
    tokens = np.array(["0", "log2:2", "", "7"], dtype=object)
    assert loaded.fields[0].encode(tokens).tolist() == [2, 3, 1, 0]


# --- inconsistent files ------------------------------------------------------------------------


def broken(change) -> dict:
    data = copy.deepcopy(small_map().to_dict())
    change(data)
    return data


def test_from_dict_bad_offset():
    data = broken(lambda d: d["fields"][1].update(offset=5))
    with pytest.raises(FeatureMapError, match="field 'C1' has offset 5, expected 4"):
        FeatureMap.from_dict(data)


def test_from_dict_vocab_size_mismatch():
    data = broken(lambda d: d["fields"][0].update(vocab_size=5))
    with pytest.raises(FeatureMapError, match="field 'I1' has vocab_size 5"):
        FeatureMap.from_dict(data)


def test_from_dict_counts_length_mismatch():
    data = broken(lambda d: d["fields"][0]["counts"].pop())
    with pytest.raises(FeatureMapError, match="3 counts"):
        FeatureMap.from_dict(data)


def test_from_dict_missing_field_key():
    data = broken(lambda d: d["fields"][0].pop("tokens"))
    with pytest.raises(FeatureMapError, match="missing the key 'tokens'"):
        FeatureMap.from_dict(data)


@pytest.mark.parametrize("key", ["format_version", "dataset", "fields", "min_count", "num_features"])
def test_from_dict_missing_top_key(key):
    data = broken(lambda d: d.pop(key))
    with pytest.raises(FeatureMapError, match=f"missing the key '{key}'"):
        FeatureMap.from_dict(data)


def test_from_dict_num_features_mismatch():
    data = broken(lambda d: d.update(num_features=8))
    with pytest.raises(FeatureMapError, match="num_features is 8, but the fields add up to 7"):
        FeatureMap.from_dict(data)


def test_from_dict_num_fields_mismatch():
    data = broken(lambda d: d.update(num_fields=3))
    with pytest.raises(FeatureMapError, match="num_fields is 3"):
        FeatureMap.from_dict(data)


def test_from_dict_unknown_version():
    data = broken(lambda d: d.update(format_version=99))
    with pytest.raises(FeatureMapError, match="format_version 99 is not supported"):
        FeatureMap.from_dict(data)


def test_from_dict_no_fields():
    data = broken(lambda d: d.update(fields=[], num_features=0, num_fields=0))
    with pytest.raises(FeatureMapError, match="no fields"):
        FeatureMap.from_dict(data)


def test_from_dict_duplicate_field():
    def rename(d):
        d["fields"][1]["name"] = "I1"

    with pytest.raises(FeatureMapError, match="field 'I1' appears twice"):
        FeatureMap.from_dict(broken(rename))


def test_from_dict_duplicate_token():
    def duplicate(d):
        d["fields"][0]["tokens"] = ["0", "0"]

    with pytest.raises(FeatureMapError, match="token '0' appears twice"):
        FeatureMap.from_dict(broken(duplicate))


def test_from_dict_oov_id_mismatch():
    data = broken(lambda d: d["fields"][1].update(oov_id=6))
    with pytest.raises(FeatureMapError, match="oov_id 6"):
        FeatureMap.from_dict(data)


def test_from_dict_negative_count():
    def negative(d):
        d["fields"][0]["counts"][0] = -1

    with pytest.raises(FeatureMapError, match="negative count"):
        FeatureMap.from_dict(broken(negative))


def test_from_dict_non_integer_offset():
    data = broken(lambda d: d["fields"][0].update(offset="zero"))
    with pytest.raises(FeatureMapError, match="value of the wrong type .*'zero'"):
        FeatureMap.from_dict(data)


def test_from_dict_not_an_object():
    with pytest.raises(FeatureMapError, match="must be a JSON object"):
        FeatureMap.from_dict([1, 2, 3])


def test_load_missing_file(tmp_path):
    with pytest.raises(FeatureMapError, match="feature map not found"):
        FeatureMap.load(tmp_path / "absent.json")


def test_load_invalid_json(tmp_path):
    path = tmp_path / "feature_map.json"
    path.write_text('{"format_version": 1,', encoding="utf-8")
    with pytest.raises(FeatureMapError, match="not valid JSON"):
        FeatureMap.load(path)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "feature_map.json"
    path.write_text(json.dumps(broken(lambda d: d["fields"][1].update(offset=5))), encoding="utf-8")
    with pytest.raises(FeatureMapError, match="feature_map.json: field 'C1' has offset 5"):
        FeatureMap.load(path)


def test_from_dict_blank_token():
    def blank(d):
        d["fields"][0]["tokens"] = ["0", ""]

    with pytest.raises(FeatureMapError, match="lists the blank token"):
        FeatureMap.from_dict(broken(blank))
