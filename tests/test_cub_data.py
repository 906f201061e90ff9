"""CUB raw readers: the CUB-200-2011 layout, both caption layouts, the splits, and clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from meme.features.cub_files import (MMVAE_TEST_CLASSES, SYNTHETIC_CLASSES, find_cub_root, read_captions, read_cub_images,
                           read_flat_captions_only, write_synthetic_cub)
from meme.errors import MemeError


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return write_synthetic_cub(tmp_path_factory.mktemp("cub"), per_class=6)


def test_metadata_reader_orders_images_by_folder_and_reads_labels_and_splits(cub):
    images = read_cub_images(cub)
    root = cub / "CUB_200_2011"
    assert find_cub_root(cub) == root and find_cub_root(root) == root
    assert len(images) == 6 * len(SYNTHETIC_CLASSES)
    # folder order: (class folder, file name) sorted -- images.txt lists them in another order
    assert images.paths == sorted(images.paths, key=lambda p: tuple(p.split("/")))
    listed = [line.split()[1] for line in (root / "images.txt").read_text().splitlines()]
    assert listed != images.paths
    ids = {line.split()[1]: int(line.split()[0]) for line in (root / "images.txt").read_text().splitlines()}
    labels = {int(a): int(b) for a, b in (ln.split() for ln in (root / "image_class_labels.txt").read_text().splitlines())}
    train = {int(a): b == "1" for a, b in (ln.split() for ln in (root / "train_test_split.txt").read_text().splitlines())}
    for r, p in enumerate(images.paths):
        i = ids[p]
        assert images.image_ids[r] == i
        assert images.labels[r] == labels[i] - 1
        assert images.official_train[r] == train[i]
        assert images.class_split[r] == ("test" if labels[i] in MMVAE_TEST_CLASSES else "train")
        assert images.image_path(r).is_file()
    assert images.class_names[0] == "001.Black_footed_Albatross"
    assert set(images.sources) == {"images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"}


def test_mmvae_test_classes_are_the_50_of_the_zero_shot_split():
    assert len(MMVAE_TEST_CLASSES) == 50 and min(MMVAE_TEST_CLASSES) == 1 and max(MMVAE_TEST_CLASSES) == 197
    assert {1, 4, 14, 197}.issubset(MMVAE_TEST_CLASSES) and not {2, 3, 10, 200} & MMVAE_TEST_CLASSES


def test_both_caption_layouts_agree(cub):
    images = read_cub_images(cub)
    c10 = read_captions(cub, images, "c10")
    flat = read_captions(cub, images, "flat")
    assert read_captions(cub, images).texts == c10.texts  # auto picks text_c10/ when present
    assert np.array_equal(c10.image_index, np.arange(len(images)))
    assert len(c10) == len(flat) == 10 * len(images)
    # the flat files hold the train/val classes first, then the test classes: same captions per image
    by_image_flat = {int(i): flat.texts[10 * k:10 * k + 10] for k, i in enumerate(flat.image_index)}
    by_image_c10 = {int(i): c10.texts[10 * k:10 * k + 10] for k, i in enumerate(c10.image_index)}
    assert by_image_flat == by_image_c10
    first = (cub / "text_c10" / images.paths[0]).with_suffix(".txt").read_text().splitlines()
    assert by_image_c10[0] == first


def test_splits(cub):
    images = read_cub_images(cub)
    assert np.array_equal(images.split("classes"), images.class_split)
    assert np.array_equal(images.split("official") == "train", images.official_train)
    r1, r2 = images.split("random", seed=3, test_fraction=0.25), images.split("random", seed=3, test_fraction=0.25)
    assert np.array_equal(r1, r2) and (r1 == "test").sum() == round(0.25 * len(images))
    assert not np.array_equal(r1, images.split("random", seed=4, test_fraction=0.25))
    with pytest.raises(MemeError, match="unknown CUB split 'zero'; valid: classes, official, random"):
        images.split("zero")


def test_flat_files_without_metadata(cub):
    images, caps = read_flat_captions_only([cub / "text_trainvalclasses.txt", cub / "text_testclasses.txt"])
    full = read_cub_images(cub)
    n_train = int((full.class_split == "train").sum())
    assert len(images) == len(full) and list(images.image_ids) == list(range(1, len(full) + 1))
    assert list(images.class_split) == ["train"] * n_train + ["test"] * (len(full) - n_train)
    assert (images.labels == -1).all() and images.official_train is None
    assert caps.texts == read_captions(cub, full, "flat").texts
    with pytest.raises(MemeError, match="official CUB split needs train_test_split.txt"):
        images.split("official")


def test_missing_files_give_clear_errors(cub, tmp_path):
    with pytest.raises(MemeError, match=r"no CUB-200-2011 folder at .*expected images.txt, image_class_labels.txt, "
                                        r"train_test_split.txt, classes.txt, images/.*cub_200_2011"):
        read_cub_images(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(cub, copy)
    images = read_cub_images(copy)
    (copy / "text_testclasses.txt").unlink()
    partial = read_captions(copy, images, "flat")            # one flat file is enough for its images
    assert set(images.class_split[partial.image_index]) == {"train"}
    (copy / "text_trainvalclasses.txt").unlink()
    with pytest.raises(MemeError, match="expected text_trainvalclasses.txt and/or text_testclasses.txt"):
        read_captions(copy, images, "flat")
    victim = (copy / "text_c10" / images.paths[3]).with_suffix(".txt")
    victim.write_text("only one line\n")
    with pytest.raises(MemeError, match="has 1 caption lines, expected 10"):
        read_captions(copy, images, "c10")
    victim.unlink()
    with pytest.raises(MemeError, match="caption file .* is missing"):
        read_captions(copy, images, "c10")
    (copy / "CUB_200_2011" / "images" / images.paths[0]).unlink()
    with pytest.raises(MemeError, match=r"1 image\(s\) listed in images.txt are missing"):
        read_cub_images(copy)


def test_flat_file_with_wrong_line_count(cub, tmp_path):
    shutil.copytree(cub, tmp_path / "c")
    path = tmp_path / "c" / "text_testclasses.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-10]))
    with pytest.raises(MemeError, match=r"has 170 lines, but the test classes have 18 images \(180 lines expected"):
        read_captions(tmp_path / "c", read_cub_images(tmp_path / "c"), "flat")
    path.write_text("a\n" * 11)
    with pytest.raises(MemeError, match="not a multiple of 10"):
        read_flat_captions_only([path])
