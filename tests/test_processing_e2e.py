"""Image processing end to end: the real CLI against the real test server (dedupe, verify_hash,
resizing into WebDataset and ImageFolder)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from flowdc.testserver import ImageServer
from tests.conftest import run_cli
from tests.test_e2e import (
    assert_ok,
    assert_one_line_error,
    check_imagefolder_rules,
    check_results,
    check_tar_layout,
    download,
    image_files,
    load_webdataset,
    temp_leftovers,
    write_csv,
)

SHARD = 10  # small shards, so two worker processes share the dedupe index


def test_dedupe_stores_each_distinct_image_once(
    server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    # 8 distinct images, each reached by 5 URLs (two hosts, query strings): 40 rows, 4 shards
    rows = [
        {"url": server.url(f"img/{n}.jpg", host=copy % 2) + f"?copy={copy}", "label": f"c{n % 2}"}
        for copy in range(5)
        for n in range(8)
    ]
    rows.append({"url": server.url("status/404"), "label": "c0"})
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    done = download(source, output, "--label", "label", "--shard_size", str(SHARD), "--dedupe")
    assert_ok(done)
    by_key = check_results(output, rows, SHARD)
    stored = {key: row for key, row in by_key.items() if row["status"] == "success"}
    copies = {key: row for key, row in by_key.items() if row["status"] == "duplicate"}
    assert len(stored) == 8 and len(copies) == 32
    assert len({row["sha256"] for row in stored.values()}) == 8
    for key, row in copies.items():
        owner = stored[row["duplicate_of"]]  # names a stored sample...
        assert owner["sha256"] == row["sha256"], key  # ...with the same bytes
        assert row["path"] is None
    samples = check_tar_layout(output)
    assert set(samples) == set(stored)  # the copies are not in the tars
    for key, members in samples.items():
        assert hashlib.sha256(members["jpg"]).hexdigest() == stored[key]["sha256"]
    overview = json.loads((output / "overview.json").read_text())
    assert overview["error_breakdown"]["duplicate"] == 32

    # a second run into a new output starts a new index: everything is stored once again
    again = tmp_path / "again"
    assert_ok(download(source, again, "--label", "label", "--shard_size", "40", "--dedupe"))
    assert sum(row["status"] == "success" for row in check_results(again, rows, 40).values()) == 8

    # without --dedupe every copy is stored
    plain = tmp_path / "plain"
    assert_ok(download(source, plain, "--label", "label", "--shard_size", str(SHARD)))
    assert len(check_tar_layout(plain)) == 40


def test_dedupe_in_imagefolder(server: ImageServer, tmp_path: Path) -> None:
    rows = [{"url": server.url(f"img/{n % 3}.jpg") + f"?r={n}", "label": "a"} for n in range(9)]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    options = ["--label", "label", "--output_format", "imagefolder", "--dedupe"]
    assert_ok(download(source, output, *options, "--shard_size", "10000"))
    by_key = check_results(output, rows, 10_000)
    assert sorted(row["status"] for row in by_key.values()).count("success") == 3
    assert len(image_files(output)) == 3
    assert check_imagefolder_rules(output) == {"a": 3}  # the dedupe index is no class folder
    assert sorted(p.name for p in output.glob(".flowdc-dedupe*")) == [".flowdc-dedupe.sqlite"]


def test_verify_hash(server: ImageServer, images: dict[str, bytes], tmp_path: Path) -> None:
    def digest(name: str) -> str:
        return hashlib.sha256(images[name]).hexdigest()

    rows = [
        {"url": server.url("img/1.jpg"), "expected": digest("1.jpg")},
        {"url": server.url("img/2.jpg"), "expected": digest("3.jpg")},  # wrong
        {"url": server.url("img/4.jpg"), "expected": ""},  # nothing to check
        {"url": server.url("img/5.jpg"), "expected": digest("5.jpg").upper()},
        {"url": server.url("img/pic.png"), "expected": "not a hash"},
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    # resizing too: the hash is of the downloaded bytes, not of what is stored
    done = download(
        source, output, "--verify_hash", "expected", "--resize_mode", "keep_ratio", "--image_size",
        "16", "--shard_size", "10000",
    )  # fmt: skip
    assert_ok(done)
    by_key = check_results(output, rows, 10_000)
    statuses = [by_key[key]["status"] for key in sorted(by_key)]
    assert statuses == ["success", "hash_mismatch", "success", "success", "hash_mismatch"]
    mismatch = by_key[sorted(by_key)[1]]
    assert digest("2.jpg") in mismatch["error"] and mismatch["sha256"] is None
    stored = check_tar_layout(output)
    assert len(stored) == 3
    first = by_key[sorted(by_key)[0]]
    assert first["sha256"] == digest("1.jpg") and min(first["width"], first["height"]) == 16

    # a column that is not in the input is a one-line error before anything is fetched
    bad = download(source, tmp_path / "bad", "--verify_hash", "sha")
    line = assert_one_line_error(bad)
    assert "'sha' not found" in line and "--verify_hash" in line


def test_resized_webdataset_loads_with_the_promised_sizes(
    server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    names = ["large.jpg", "cmyk.jpg", "pic.png", "anim.gif", *[f"{n}.jpg" for n in range(12)]]
    rows = [{"url": server.url(f"img/{name}"), "label": "x"} for name in names]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    done = download(
        source, output, "--label", "label", "--resize_mode", "center_crop", "--image_size", "32",
        "--encode_format", "webp", "--min_image_size", "40", "--shard_size", "10000",
    )  # fmt: skip
    assert_ok(done)
    by_key = check_results(output, rows, 10_000)
    by_name = dict(zip(names, (by_key[key] for key in sorted(by_key)), strict=True))
    assert by_name["cmyk.jpg"]["status"] == "too_small"  # 40x30
    assert by_name["anim.gif"]["status"] == "too_small"
    loaded = load_webdataset(output)
    assert len(loaded) == sum(row["status"] == "success" for row in by_key.values()) == 14
    for sample in loaded:
        assert sample["webp"].size == (32, 32)
        meta = sample["json"]
        assert (meta["width"], meta["height"], meta["format"]) == (32, 32, "webp")
        assert meta["original_width"] >= 40
    large = by_name["large.jpg"]
    assert (large["original_width"], large["original_height"]) == (800, 600)
    assert large["sha256"] == hashlib.sha256(images["large.jpg"]).hexdigest()
    raw = {sample["__key__"]: sample for sample in load_webdataset(output, decode=False)}
    assert large["stored_sha256"] == hashlib.sha256(raw[large["key"]]["webp"]).hexdigest()
    assert not temp_leftovers(output)
    checked = run_cli("validate", str(output))  # the stored, resized bytes match their hash
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_resized_imagefolder_keeps_small_images_untouched(
    server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    rows = [
        {"url": server.url("img/large.jpg"), "label": "big"},
        {"url": server.url("img/0.jpg"), "label": "small"},
        {"url": server.url("img/anim.gif"), "label": "gif"},
    ]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    done = download(
        source, output, "--label", "label", "--output_format", "imagefolder", "--resize_mode",
        "keep_ratio_largest", "--image_size", "100", "--resize_only_if_bigger",
    )  # fmt: skip
    assert_ok(done)
    files = {path.parent.name: path for path in image_files(output)}
    assert Image.open(files["big"]).size == (100, 75)
    assert files["small"].read_bytes() == images["0.jpg"]  # smaller than 100: untouched
    gif = Image.open(io.BytesIO(files["gif"].read_bytes()))
    assert gif.format == "PNG" and gif.size == (40, 30)  # loaders cannot read GIF: PNG
    checked = run_cli("validate", str(output))  # converted and resized files match their hash
    assert checked.returncode == 0, checked.stdout + checked.stderr
