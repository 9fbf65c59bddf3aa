import json

import pytest

from edgeseg.errors import DataError
from edgeseg.split import SPLITS_DIR, canonical_split, make_split, select, split_hash


def _dsb():
    return json.loads((SPLITS_DIR / "dsb2018_stage1_train.json").read_text())


def test_make_split_is_deterministic_and_disjoint():
    names = [f"img{i}" for i in range(100)]
    strata = ["a" if i % 3 else "b" for i in range(100)]
    s1, s2 = (
        make_split(names, strata, seed=0),
        make_split(list(reversed(names)), list(reversed(strata)), seed=0),
    )
    assert s1 == s2
    assert not set(s1["train"]) & set(s1["test"]) and not set(s1["val"]) & set(s1["test"])
    assert sum(len(v) for v in s1.values()) == 100
    assert make_split(names, strata, seed=1) != s1


def test_every_stratum_reaches_val_and_test():
    names = [f"x{i}" for i in range(30)]
    strata = ["rare"] * 3 + ["common"] * 27
    s = make_split(names, strata, seed=0)
    assert set(s["val"]) & {"x0", "x1", "x2"} and set(s["test"]) & {"x0", "x1", "x2"}


def test_committed_dsb_split_covers_all_670_images_with_every_type_in_every_part():
    d = _dsb()
    assert (len(d["train"]), len(d["val"]), len(d["test"])) == (534, 68, 68)
    for part in ("train", "val", "test"):
        assert {d["image_types"][n] for n in d[part]} == {"fluorescence", "brightfield", "stained"}
    assert split_hash(d) == d["hash"]


def test_canonical_split_recognises_the_corrected_subset():
    d = _dsb()
    names = sorted(d["image_types"])[6:]  # like stage1_train_fixes: a few images removed
    found = canonical_split(names)
    assert found is not None and found[0] == "dsb2018_stage1_train"


def test_sample_folder_defaults_to_all_and_rejects_test(sample_dir):
    names = [p.name for p in sample_dir.iterdir() if p.is_dir()]
    chosen, info = select(names, None)
    assert info["split"] == "test"  # the sample images are all in the canonical test split
    assert len(chosen) == 8
    with pytest.raises(DataError, match="no canonical split"):
        select(["a", "b"], "test")
    assert select(["a", "b"], None)[1]["split"] == "all"


def test_select_items_keeps_the_items_of_the_split_in_order():
    from types import SimpleNamespace

    from edgeseg.split import select_items

    d = _dsb()
    items = [SimpleNamespace(name=n) for n in sorted(d["image_types"])]
    chosen, info = select_items(items, "val")
    assert [it.name for it in chosen] == sorted(d["val"]) and info["split"] == "val"
