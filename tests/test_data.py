import cv2
import numpy as np
import pytest
from conftest import write_disc_pair

from edgeseg.data import detect_layout, find_items, image_type, load_sample
from edgeseg.errors import DataError


def test_kaggle_layout_merges_per_nucleus_masks_into_instance_labels(sample_dir):
    items = find_items(sample_dir)
    assert len(items) == 8 and all(it.layout == "kaggle" for it in items)
    s = load_sample(items[0])
    assert s.image.dtype == np.uint8 and s.image.shape[2] == 3  # RGBA -> RGB
    assert s.labels.max() == len(items[0].mask_paths)  # one label per mask file
    merged = np.zeros(s.labels.shape, bool)
    for p in items[0].mask_paths:
        merged |= cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0
    np.testing.assert_array_equal(s.mask, merged)  # max projection


def test_paired_layout_reads_instance_label_masks(tmp_path):
    labels = write_disc_pair(tmp_path, "a")
    s = load_sample(find_items(tmp_path)[0])
    assert detect_layout(tmp_path) == "paired"
    np.testing.assert_array_equal(s.labels, labels.astype(np.int32))


def test_paired_layout_splits_binary_masks_into_instances(tmp_path):
    write_disc_pair(tmp_path, "b", binary=True)
    assert load_sample(find_items(tmp_path)[0]).labels.max() == 2


def test_image_types_of_the_sample(sample_dir):
    types = [load_sample(it).image_type for it in find_items(sample_dir)]
    assert types.count("stained") == 2 and types.count("fluorescence") == 6


def test_image_type_brightfield_is_gray_and_bright():
    assert image_type(np.full((8, 8, 3), 200, np.uint8)) == "brightfield"


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_items(tmp_path / "nope")


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(DataError, match="holds no dataset"):
        find_items(tmp_path)


def test_image_without_masks_is_a_user_error(kaggle_copy):
    victim = sorted(kaggle_copy.iterdir())[0]
    for p in (victim / "masks").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="has no masks"):
        find_items(kaggle_copy)


def test_paired_image_without_mask_is_a_user_error(tmp_path):
    write_disc_pair(tmp_path, "a")
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match="has no mask"):
        find_items(tmp_path)


def test_corrupt_png_is_a_user_error(kaggle_copy):
    item = find_items(kaggle_copy)[0]
    item.image_path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match="corrupt"):
        load_sample(item)


def test_mask_of_other_size_is_a_user_error(tmp_path):
    write_disc_pair(tmp_path, "a")
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="size of its image"):
        load_sample(find_items(tmp_path)[0])


def test_mask_fixes_swap_masks_and_drop_removed(kaggle_copy, tmp_path):
    items = find_items(kaggle_copy)
    fixes = tmp_path / "fixes"
    fixed_id, removed_id = items[0].name, items[1].name
    (fixes / fixed_id / "masks").mkdir(parents=True)
    cv2.imwrite(str(fixes / fixed_id / "masks" / "only.png"), np.full((256, 256), 255, np.uint8))
    (fixes / "REMOVED.txt").write_text(removed_id + "\n")
    fixed = {it.name: it for it in find_items(kaggle_copy, mask_fixes=fixes)}
    assert removed_id not in fixed and len(fixed) == 7
    assert [p.name for p in fixed[fixed_id].mask_paths] == ["only.png"]
