"""End-to-end tests: the real `flowdc` CLI in a subprocess against the real image server.

Every run goes through `python -m flowdc download ...` (conftest.run_cli, or subprocess.Popen for
runs that are killed or interrupted) and downloads from the project's test server on 127.0.0.x.
The outputs are then checked against the contract in DESIGN.md: WebDataset tars readable by the
`webdataset` package, ImageFolder readable by torchvision's rules and Hugging Face `datasets`,
one results row per input row, overview.json, and resume after kill -9 or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc.testserver import ImageServer
from tests.conftest import run_cli

# What torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FAST = (
    "--processes",
    "2",
    "--retry_backoff_sec",
    "0.01",
    "--timeout",
    "5",
    "--no-enable_rate_limiting",
)
RUN_TIMEOUT = 120


# -- helpers -----------------------------------------------------------------------------------
def download_args(input_path: Path, output: Path, *extra: str) -> list[str]:
    return ["download", "--input", str(input_path), "--output", str(output), *FAST, *extra]


def download(input_path: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*download_args(input_path, output, *extra), timeout=RUN_TIMEOUT)


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{done.stderr}"
    return lines[0]


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def expected_key(index: int, shard_size: int) -> str:
    width = len(str(shard_size - 1))
    return f"{index // shard_size:05d}{index % shard_size:0{width}d}"


def shard_files(output: Path, suffix: str) -> list[Path]:
    """The committed per-shard files `{shard:05d}{suffix}`, sorted."""
    return sorted(
        p
        for p in output.glob(f"[0-9][0-9][0-9][0-9][0-9]{suffix}")
        if len(p.name) == 5 + len(suffix)
    )


def read_results(output: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in shard_files(output, ".parquet"):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def check_results(
    output: Path, inputs: list[dict[str, str]], shard_size: int, url_column: str = "url"
) -> dict[str, dict[str, Any]]:
    """Exactly one results row per input row, in its place; returns the rows by key."""
    rows = read_results(output)
    keys = Counter(row["key"] for row in rows)
    duplicates = [key for key, count in keys.items() if count > 1]
    assert not duplicates, f"keys in more than one results row: {duplicates[:10]}"
    wanted = {expected_key(i, shard_size): row for i, row in enumerate(inputs)}
    missing, extra = sorted(set(wanted) - set(keys)), sorted(set(keys) - set(wanted))
    assert not missing and not extra, f"missing keys {missing[:10]}, extra keys {extra[:10]}"
    by_key = {row["key"]: row for row in rows}
    for key, source in wanted.items():
        assert by_key[key]["url"] == source[url_column], key
    return by_key


def successes(rows: dict[str, dict[str, Any]]) -> set[str]:
    return {key for key, row in rows.items() if row["status"] == "success"}


def temp_leftovers(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if ".tmp-" in p.name]


def tar_members(output: Path) -> list[tuple[Path, tarfile.TarInfo, bytes]]:
    members = []
    for path in shard_files(output, ".tar"):
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                handle = tar.extractfile(info)
                assert handle is not None, f"{path}:{info.name} is not a file"
                members.append((path, info, handle.read()))
    return members


def member_key(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, extension = base.partition(".")
    return key, extension


def check_tar_layout(output: Path) -> dict[str, dict[str, bytes]]:
    """Each sample's members are consecutive and share its key; returns key -> {ext: data}."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in shard_files(output, ".tar"):
        with tarfile.open(path) as tar:
            names = [info.name for info in tar.getmembers()]
        runs = [key for key, _ in itertools.groupby(member_key(n)[0] for n in names)]
        repeated = [key for key, count in Counter(runs).items() if count > 1]
        assert not repeated, f"{path.name}: members of {repeated[:5]} are not consecutive"
    for path, info, data in tar_members(output):
        key, extension = member_key(info.name)
        assert "/" not in info.name, info.name
        assert extension not in samples.setdefault(key, {}), f"{info.name} twice ({path.name})"
        samples[key][extension] = data
    return samples


def load_webdataset(output: Path, decode: bool = True) -> list[dict[str, Any]]:
    import webdataset as wds

    paths = [str(p) for p in shard_files(output, ".tar")]
    dataset = wds.WebDataset(paths, shardshuffle=False)
    if decode:
        dataset = dataset.decode("pil")
    return list(dataset)


def image_files(output: Path) -> list[Path]:
    """Every file inside a folder under the output (ImageFolder samples)."""
    return sorted(p for d in output.iterdir() if d.is_dir() for p in d.rglob("*") if p.is_file())


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file (hidden ones too) with its mtime and content hash."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, file_digest(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    found = []
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def child_pids(parent: int) -> list[int]:
    found = []
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == parent and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A `flowdc` run in its own session (process group), stdout and stderr to files."""

    def __init__(self, args: list[str], logs: Path) -> None:
        self.stdout_path = logs.with_suffix(".out")
        self.stderr_path = logs.with_suffix(".err")
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flowdc", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # A shell's background job inherits SIGINT ignored; a user's Ctrl-C never is.
                preexec_fn=_default_sigint,
            )
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group
        self.extra_pids: list[int] = []

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_stats(self, output: Path, count: int, timeout: float = 60) -> None:
        def ready() -> bool:
            return self.proc.poll() is not None or len(shard_files(output, "_stats.json")) >= count

        assert wait_for(ready, timeout), f"no {count} committed shards within {timeout} s"
        assert self.proc.poll() is None, (
            f"the run ended (exit {self.proc.returncode}) before it could be stopped:\n"
            f"{self.stderr}"
        )

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        for pid in group_pids(self.pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.extra_pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def background(args: list[str], logs: Path) -> Iterator[Background]:
    run = Background(args, logs)
    try:
        yield run
    finally:
        run.cleanup()


def slow_rows(server: ImageServer, count: int) -> list[dict[str, str]]:
    return [
        {
            "url": server.url(f"slow/0.02/{i % 60}.jpg", host=i % 2),
            "label": f"class{i % 4}",
            "photo_id": str(5000 + i),
        }
        for i in range(count)
    ]


# -- WebDataset: the whole contract -----------------------------------------------------------
WDS_SHARD = 20
WDS_MAX_BYTES = 100_000


@pytest.fixture(scope="module")
def wds_run(
    server: ImageServer, images: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    assert len(images["large.jpg"]) < WDS_MAX_BYTES  # a success, not too_large
    base = tmp_path_factory.mktemp("wds")
    classes = ["cat", "dog", "bird"]
    rows: list[dict[str, str]] = []
    for i in range(40):
        rows.append(
            {
                "url": server.url(f"img/{i}.jpg", host=i % 2),
                "label": classes[i % 3],
                "photo_id": str(1000 + i),
                "note": f"note {i}, with a comma",
            }
        )
    failures = {
        5: ("", "invalid_url"),
        11: ("ftp://127.0.0.1/file.jpg", "invalid_url"),
        17: (server.url("status/404/missing.jpg"), "failed_to_download"),
        23: (server.url("html/page.jpg"), "not_an_image"),
        29: (server.url("bigcl/1"), "too_large"),
        35: (server.url("big/1"), "too_large"),
    }
    for position, (url, _) in sorted(failures.items()):
        rows.insert(position, {"url": url, "label": "dog", "photo_id": "x", "note": "broken"})
    rows.append({"url": server.url("img/pic.png"), "label": "cat", "photo_id": "png", "note": ""})
    rows.append(
        {"url": server.url("img/large.jpg"), "label": "bird", "photo_id": "big", "note": ""}
    )
    input_path = write_csv(base / "urls.csv", rows)
    output = base / "out"
    done = download(
        input_path,
        output,
        "--label",
        "label",
        "--shard_size",
        str(WDS_SHARD),
        "--max_bytes",
        str(WDS_MAX_BYTES),
    )
    assert_ok(done)
    expected = {expected_key(i, WDS_SHARD): None for i in range(len(rows))}
    for position, (_, status) in failures.items():
        expected[expected_key(position, WDS_SHARD)] = status
    return {"rows": rows, "output": output, "expected_failures": expected, "done": done}


def test_webdataset_results_table_has_every_row_once(wds_run: dict[str, Any]) -> None:
    output, rows = wds_run["output"], wds_run["rows"]
    by_key = check_results(output, rows, WDS_SHARD)
    for key, status in wds_run["expected_failures"].items():
        row = by_key[key]
        assert row["status"] == (status or "success"), row
        if status is not None:
            assert row["error"], row
    assert by_key[expected_key(17, WDS_SHARD)]["http_status"] == 404
    # the input's extra columns are in the results table
    for i, source in enumerate(rows):
        row = by_key[expected_key(i, WDS_SHARD)]
        assert row["photo_id"] == source["photo_id"]
        assert row["note"] == source["note"]
        assert row["label"] == source["label"]
    # one results table and one stats file per shard, and they agree
    shard_count = -(-len(rows) // WDS_SHARD)
    assert [p.name for p in shard_files(output, ".parquet")] == [
        f"{s:05d}.parquet" for s in range(shard_count)
    ]
    for shard in range(shard_count):
        stats = json.loads((output / f"{shard:05d}_stats.json").read_text())
        table = pq.read_table(output / f"{shard:05d}.parquet").to_pylist()
        assert stats["rows"] == len(table)
        assert stats["successes"] == sum(r["status"] == "success" for r in table)
        assert stats["status_counts"] == dict(Counter(r["status"] for r in table))
    assert not temp_leftovers(output)


def test_webdataset_tars_load_with_webdataset(
    wds_run: dict[str, Any], images: dict[str, bytes]
) -> None:
    output = wds_run["output"]
    by_key = {row["key"]: row for row in read_results(output)}
    ok = successes(by_key)
    assert len(ok) == len(wds_run["rows"]) - 6
    labels = json.loads((output / "labels.json").read_text())
    class_of = {entry["label"]: entry["index"] for entry in labels}
    assert sorted(class_of) == ["bird", "cat", "dog"]

    samples = load_webdataset(output)
    assert len(samples) == len(ok)
    keys = [sample["__key__"] for sample in samples]
    assert len(set(keys)) == len(keys)
    assert set(keys) == ok
    source = {expected_key(i, WDS_SHARD): row for i, row in enumerate(wds_run["rows"])}
    seen_formats = set()
    for sample in samples:
        key = sample["__key__"]
        image_ext = [ext for ext in ("jpg", "png") if ext in sample]
        assert len(image_ext) == 1, sorted(sample)
        seen_formats.add(image_ext[0])
        image = sample[image_ext[0]]
        meta = sample["json"]
        for name in ("url", "label", "key", "sha256", "width", "height"):
            assert name in meta, (name, meta)
        assert meta["key"] == key
        assert meta["url"] == source[key]["url"]
        assert meta["label"] == source[key]["label"]
        assert (meta["width"], meta["height"]) == image.size
        assert meta["photo_id"] == source[key]["photo_id"]
        assert meta["note"] == source[key]["note"]
        assert sample["txt"] == source[key]["label"]
        assert sample["cls"] == class_of[source[key]["label"]]
        assert meta["sha256"] == by_key[key]["sha256"]
    assert seen_formats == {"jpg", "png"}

    # raw bytes: the sha256 in the json is the image's, and the image is the one served
    served = {name: data for name, data in images.items()}
    for sample in load_webdataset(output, decode=False):
        key = sample["__key__"]
        data = sample.get("jpg") or sample["png"]
        meta = json.loads(sample["json"])
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert data == served[source[key]["url"].rsplit("/", 1)[-1]]


def test_webdataset_tar_members_are_grouped_by_key(wds_run: dict[str, Any]) -> None:
    output = wds_run["output"]
    ok = successes({row["key"]: row for row in read_results(output)})
    samples = check_tar_layout(output)
    assert set(samples) == ok
    for key, members in samples.items():
        assert {"json", "cls", "txt"} <= set(members), (key, sorted(members))
        assert len(set(members) & {"jpg", "png"}) == 1, (key, sorted(members))


def test_webdataset_overview_matches_results(wds_run: dict[str, Any]) -> None:
    output = wds_run["output"]
    overview = json.loads((output / "overview.json").read_text())
    summary = overview["download_summary"]
    rows = read_results(output)
    ok = [row for row in rows if row["status"] == "success"]
    total_bytes = sum(row["bytes"] for row in ok)
    for name in (
        "total",
        "successful",
        "failed",
        "success_rate_percent",
        "total_data_mb",
        "total_time_seconds",
        "average_speed_mb_per_s",
    ):
        assert name in summary, name
    assert summary["total"] == len(wds_run["rows"]) == len(rows)
    assert summary["successful"] == len(ok)
    assert summary["failed"] == len(rows) - len(ok)
    assert summary["success_rate_percent"] == pytest.approx(100 * len(ok) / len(rows), abs=0.01)
    assert summary["total_data_mb"] == pytest.approx(total_bytes / 1e6, abs=0.001)
    assert summary["total_time_seconds"] > 0
    assert summary["average_speed_mb_per_s"] == pytest.approx(
        summary["total_data_mb"] / summary["total_time_seconds"], rel=0.05, abs=0.002
    )
    failed = Counter(row["status"] for row in rows if row["status"] != "success")
    assert overview["error_breakdown"] == dict(failed)
    assert failed == {"invalid_url": 2, "failed_to_download": 1, "not_an_image": 1, "too_large": 2}


# -- ImageFolder with hostile labels ----------------------------------------------------------
HOSTILE_LABELS = ["..", "a/b", "", "Cat", "cat", "x\\y", "L" * 300, "CON", ".hidden", "normal"]
IF_SHARD = 8


def check_imagefolder_rules(output: Path) -> dict[str, int]:
    """torchvision ImageFolder's rules, by hand; returns class folder -> image count."""
    classes = sorted(entry.name for entry in os.scandir(output) if entry.is_dir())
    counts: dict[str, int] = {}
    for name in classes:
        folder = output / name
        assert not folder.is_symlink(), name
        entries = list(folder.iterdir())
        assert all(entry.is_file() and not entry.is_symlink() for entry in entries), (
            f"{name} holds something other than files: {entries}"
        )
        hidden = [entry.name for entry in entries if entry.name.startswith(".")]
        assert not hidden, f"hidden files in {name}: {hidden}"
        valid = [e for e in entries if e.suffix.lower() in IMG_EXTENSIONS]
        assert valid == entries, f"{name} has files torchvision skips: {set(entries) - set(valid)}"
        assert valid, f"{name} is a class folder without images"
        counts[name] = len(valid)
    return counts


def load_with_datasets(output: Path, cache: Path) -> dict[str, Any]:
    """Load the folder with Hugging Face `datasets` (offline) in a separate interpreter."""
    script = (
        "import collections, json, sys\n"
        "import datasets\n"
        "ds = datasets.load_dataset('imagefolder', data_dir=sys.argv[1], split='train',"
        " cache_dir=sys.argv[2])\n"
        "names = ds.features['label'].names\n"
        "counts = collections.Counter(names[i] for i in ds['label'])\n"
        "sizes = [im.size for im in ds['image']]\n"
        "print(json.dumps({'rows': ds.num_rows, 'names': names, 'counts': counts,"
        " 'sizes': len(sizes)}))\n"
    )
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cache / "home"),
        "HF_DATASETS_CACHE": str(cache / "datasets"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(output), str(cache / "datasets")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_imagefolder_hostile_labels(
    server: ImageServer, images: dict[str, bytes], tmp_path: Path
) -> None:
    rows: list[dict[str, str]] = []
    for index, label in enumerate(HOSTILE_LABELS):
        for j in range(3):
            n = index * 3 + j
            rows.append({"url": server.url(f"img/{n}.jpg", host=n % 2), "label": label})
    rows.append({"url": server.url("img/anim.gif"), "label": "animated"})
    rows.append({"url": server.url("status/404/gone.jpg"), "label": "only_failures"})
    input_path = write_csv(tmp_path / "urls.csv", rows)
    output = tmp_path / "out"
    done = download(
        input_path,
        output,
        "--label",
        "label",
        "--output_format",
        "imagefolder",
        "--shard_size",
        str(IF_SHARD),
    )
    assert_ok(done)
    by_key = check_results(output, rows, IF_SHARD)
    ok = successes(by_key)
    unlabeled = [key for key, row in by_key.items() if not row["label"]]
    assert len(unlabeled) == 3
    assert all(by_key[key]["status"] == "missing_label" for key in unlabeled)
    assert len(ok) == len(rows) - 1 - len(unlabeled)

    # labels.json maps every label to its own safe folder
    entries = json.loads((output / "labels.json").read_text(encoding="utf-8"))
    folder_of = {entry["label"]: entry["folder"] for entry in entries}
    assert set(folder_of) == {*HOSTILE_LABELS, "animated", "only_failures"} - {""}
    # its class indices are the loaders': folders that hold images, in sorted order
    indexed = sorted((e for e in entries if e["index"] is not None), key=lambda e: e["index"])
    assert [e["folder"] for e in indexed] == sorted(e["folder"] for e in entries if e["images"])
    assert next(e for e in entries if e["label"] == "only_failures")["index"] is None
    folders = list(folder_of.values())
    assert len({f.casefold() for f in folders}) == len(folders), folders
    for label, folder in folder_of.items():
        assert folder and folder not in (".", ".."), (label, folder)
        assert "/" not in folder and "\\" not in folder and "\0" not in folder, folder
        assert not folder.startswith("."), (label, folder)
        assert len(folder.encode("utf-8")) <= 255, (label, folder)

    # every image is inside the output, in its label's folder, with the bytes served (sha256 is
    # the served bytes', so the GIF stored as PNG has the GIF's)
    root = output.resolve()
    gif_key = expected_key(len(HOSTILE_LABELS) * 3, IF_SHARD)
    for key in ok:
        row = by_key[key]
        path = (output / row["path"]).resolve()
        assert root in path.parents, row["path"]
        assert path.parent == root / folder_of[row["label"]], (row["label"], row["path"])
        assert path.stem == key
        if key == gif_key:
            assert row["sha256"] == hashlib.sha256(images["anim.gif"]).hexdigest()
        else:
            assert file_digest(path) == row["sha256"]
    for path in output.rglob("*"):
        assert root in path.resolve().parents, path
        assert not path.is_symlink(), path

    # the GIF became a PNG
    gif = by_key[gif_key]
    assert gif["status"] == "success" and gif["format"] == "png", gif
    assert gif["path"].endswith(".png")
    assert (output / gif["path"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # torchvision ImageFolder rules: only class folders, each with images, nothing stray
    counts = check_imagefolder_rules(output)
    with_images = {folder_of[by_key[key]["label"]] for key in ok}
    assert set(counts) == with_images
    assert folder_of["only_failures"] not in counts
    assert sum(counts.values()) == len(ok) == len(image_files(output))
    assert not temp_leftovers(output)
    assert not list(output.glob(".*.journal"))

    # Hugging Face datasets reads it, with one class per folder
    loaded = load_with_datasets(output, tmp_path / "hf")
    assert loaded["rows"] == len(ok)
    assert sorted(loaded["names"]) == sorted(counts)
    assert loaded["counts"] == counts


def test_imagefolder_split_keyword_labels_load_with_datasets(
    server: ImageServer, tmp_path: Path
) -> None:
    labels = ["train", "test tube", "cat"]
    rows = [
        {"url": server.url(f"img/{i}.jpg", host=i % 2), "label": labels[i % len(labels)]}
        for i in range(2 * len(labels))
    ]
    input_path = write_csv(tmp_path / "urls.csv", rows)
    output = tmp_path / "out"
    done = download(input_path, output, "--label", "label", "--output_format", "imagefolder")
    assert_ok(done)
    counts = check_imagefolder_rules(output)  # torchvision is fine with these names
    assert sum(counts.values()) == len(rows)
    loaded = load_with_datasets(output, tmp_path / "hf")
    assert loaded["rows"] == len(rows), loaded
    assert loaded["counts"] == counts, loaded


# -- every input format -----------------------------------------------------------------------
FORMAT_ROWS = 9  # 8 images and one 404


def format_rows(server: ImageServer) -> list[dict[str, str]]:
    rows = [
        {
            "url": server.url(f"img/{40 + i}.jpg", host=i % 2),
            "label": ["owl", "fox"][i % 2],
            "photo_id": str(700 + i),
        }
        for i in range(FORMAT_ROWS - 1)
    ]
    rows.insert(4, {"url": server.url("status/404/no.jpg"), "label": "owl", "photo_id": "404"})
    return rows


def write_input(path: Path, fmt: str, rows: list[dict[str, str]]) -> Path:
    if fmt == "csv":
        write_csv(path, rows)
    elif fmt == "tsv":
        write_csv(path, rows, delimiter="\t")
    elif fmt == "txt":
        path.write_text("".join(row["url"] + "\n" for row in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "xml":
        records = "".join(
            "<image>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in row.items()) + "</image>"
            for row in rows
        )
        path.write_text(f'<?xml version="1.0"?>\n<images>{records}</images>\n', encoding="utf-8")
    elif fmt == "xlsx":
        import openpyxl

        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(list(rows[0]))
        for row in rows:
            sheet.append(list(row.values()))
        book.save(path)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "csv.gz":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path.write_bytes(gzip.compress(buffer.getvalue().encode("utf-8")))
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return path


@pytest.mark.parametrize(
    "fmt", ["csv", "tsv", "txt", "json", "jsonl", "xml", "xlsx", "parquet", "csv.gz"]
)
def test_input_format_end_to_end(server: ImageServer, tmp_path: Path, fmt: str) -> None:
    rows = format_rows(server)
    input_path = write_input(tmp_path / f"urls.{fmt}", fmt, rows)
    output = tmp_path / "out"
    labelled = fmt != "txt"
    extra = ["--shard_size", "5"] + (["--label", "label"] if labelled else [])
    done = download(input_path, output, *extra)
    assert_ok(done)
    by_key = check_results(output, rows, 5)
    assert len(successes(by_key)) == FORMAT_ROWS - 1
    assert by_key[expected_key(4, 5)]["status"] == "failed_to_download"
    samples = load_webdataset(output)
    assert len(samples) == FORMAT_ROWS - 1
    if labelled:
        source = {expected_key(i, 5): row for i, row in enumerate(rows)}
        for key, row in by_key.items():
            assert row["label"] == source[key]["label"]
            assert row["photo_id"] == source[key]["photo_id"]
        assert {s["txt"] for s in samples} == {"owl", "fox"}
    summary = json.loads((output / "overview.json").read_text())["download_summary"]
    assert (summary["total"], summary["successful"]) == (FORMAT_ROWS, FORMAT_ROWS - 1)


# -- resume after kill -9, Ctrl-C ---------------------------------------------------------------
KILL_ROWS = 600
KILL_SHARD = 30
KILL_OPTIONS = ("--shard_size", str(KILL_SHARD), "--concurrent_downloads", "8", "--label", "label")


def kill_group_midway(
    args: list[str], output: Path, logs: Path, also: Callable[[], bool] | None = None
) -> int:
    """Start a run, SIGKILL its whole process group once 2 shards are committed (and `also`
    holds, if given); return them."""
    with background(args, logs) as run:
        run.wait_for_stats(output, 2)
        if also is not None:
            assert wait_for(also, 30), "the run never reached the state to kill it in"
        os.killpg(run.pgid, signal.SIGKILL)
        run.proc.wait(15)
        assert run.proc.returncode == -signal.SIGKILL
        assert wait_for(lambda: not group_pids(run.pgid), 10), (
            f"processes of the killed run survive: {group_pids(run.pgid)}"
        )
    committed = len(shard_files(output, "_stats.json"))
    assert 2 <= committed < KILL_ROWS // KILL_SHARD, committed
    return committed


def check_webdataset_complete(output: Path, rows: list[dict[str, str]]) -> None:
    by_key = check_results(output, rows, KILL_SHARD)
    ok = successes(by_key)
    assert len(ok) == len(rows)
    samples = check_tar_layout(output)
    image_keys = Counter(
        member_key(info.name)[0]
        for _, info, _ in tar_members(output)
        if member_key(info.name)[1] == "jpg"
    )
    assert set(image_keys) == ok
    assert set(image_keys.values()) == {1}
    assert set(samples) == ok
    assert not temp_leftovers(output)
    assert len(load_webdataset(output, decode=False)) == len(ok)
    summary = json.loads((output / "overview.json").read_text())["download_summary"]
    assert (summary["total"], summary["successful"]) == (len(rows), len(ok))


def check_imagefolder_complete(output: Path, rows: list[dict[str, str]]) -> None:
    by_key = check_results(output, rows, KILL_SHARD)
    ok = successes(by_key)
    assert len(ok) == len(rows)
    files = image_files(output)
    stems = Counter(path.stem for path in files)
    stray = set(stems) - ok
    assert not stray, f"image files without a success row: {sorted(stray)[:10]}"
    assert set(stems.values()) == {1}
    assert len(files) == len(ok)
    for key in ok:
        assert (output / by_key[key]["path"]).is_file(), by_key[key]["path"]
    assert not temp_leftovers(output)
    assert not list(output.glob(".*.journal"))
    check_imagefolder_rules(output)


def parquet_image_keys(output: Path) -> Counter[str]:
    """How often each key is a row of the Parquet shards."""
    return Counter(
        key
        for path in sorted(output.glob("*.images.parquet"))
        for key in pq.read_table(path, columns=["key"]).column("key").to_pylist()
    )


def check_parquet_complete(output: Path, rows: list[dict[str, str]]) -> None:
    by_key = check_results(output, rows, KILL_SHARD)
    ok = successes(by_key)
    assert len(ok) == len(rows)
    keys = parquet_image_keys(output)
    assert set(keys) == ok and set(keys.values()) == {1}
    assert not temp_leftovers(output)


@pytest.mark.parametrize("output_format", ["webdataset", "imagefolder", "parquet"])
def test_resume_after_sigkill(server: ImageServer, tmp_path: Path, output_format: str) -> None:
    rows = slow_rows(server, KILL_ROWS)
    input_path = write_csv(tmp_path / "urls.csv", rows)
    output = tmp_path / "out"
    args = download_args(input_path, output, *KILL_OPTIONS, "--output_format", output_format)

    def writing_parquet() -> bool:  # mid-shard: a shard's file is being written
        return any(".images.parquet.tmp-" in path.name for path in output.iterdir())

    also = writing_parquet if output_format == "parquet" else None
    committed = kill_group_midway(args, output, tmp_path / "killed", also)
    if output_format == "parquet":
        assert writing_parquet()  # the resume must clear what the killed shard left

    done = run_cli(*args, timeout=RUN_TIMEOUT)
    assert_ok(done)
    assert f"resuming: {committed} of {KILL_ROWS // KILL_SHARD}" in done.stderr, done.stderr
    if output_format == "webdataset":
        check_webdataset_complete(output, rows)
    elif output_format == "parquet":
        check_parquet_complete(output, rows)
    else:
        check_imagefolder_complete(output, rows)


def test_workers_exit_when_main_process_is_killed(server: ImageServer, tmp_path: Path) -> None:
    rows = slow_rows(server, KILL_ROWS)
    input_path = write_csv(tmp_path / "urls.csv", rows)
    output = tmp_path / "out"
    args = download_args(input_path, output, *KILL_OPTIONS)
    with background(args, tmp_path / "main-killed") as run:
        run.wait_for_stats(output, 1)
        workers = child_pids(run.proc.pid)
        run.extra_pids = workers
        assert len(workers) >= 2, workers  # two workers (and maybe a resource tracker)
        os.kill(run.proc.pid, signal.SIGKILL)  # the main process only, not its group
        run.proc.wait(15)
        killed_at = time.monotonic()
        gone = wait_for(lambda: not any(alive(pid) for pid in workers), 10)
        waited = time.monotonic() - killed_at
        assert gone, f"workers {[p for p in workers if alive(p)]} outlive their parent"
        assert waited < 5.5, f"workers took {waited:.1f} s to notice their parent died"
    done = run_cli(*args, timeout=RUN_TIMEOUT)
    assert_ok(done)
    check_webdataset_complete(output, rows)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_and_rerun_resumes(
    server: ImageServer, tmp_path: Path, stop: signal.Signals
) -> None:
    """Ctrl-C (to the group, as a terminal sends it) or SIGTERM (timeout, SLURM) to the run."""
    rows = slow_rows(server, KILL_ROWS)
    input_path = write_csv(tmp_path / "urls.csv", rows)
    output = tmp_path / "out"
    args = download_args(input_path, output, *KILL_OPTIONS)
    with background(args, tmp_path / "interrupted") as run:
        run.wait_for_stats(output, 1)
        if stop == signal.SIGINT:
            os.killpg(run.pgid, signal.SIGINT)
        else:
            os.kill(run.proc.pid, signal.SIGTERM)
        try:
            code = run.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not stop within 30 s of Ctrl-C:\n{run.stderr}")
        stderr = run.stderr
        assert code == 130, f"exit {code}\n{stderr}"
        assert "Traceback" not in stderr, stderr
        assert "run the same command again" in stderr, stderr
        assert wait_for(lambda: not group_pids(run.pgid), 10), group_pids(run.pgid)
    assert len(shard_files(output, "_stats.json")) < KILL_ROWS // KILL_SHARD
    done = run_cli(*args, timeout=RUN_TIMEOUT)
    assert_ok(done)
    assert "resuming:" in done.stderr
    check_webdataset_complete(output, rows)


# -- reruns, other inputs, --overwrite, foreign folders ----------------------------------------
def test_rerun_overwrite_and_foreign_output(fresh_server: ImageServer, tmp_path: Path) -> None:
    server = fresh_server
    first = [{"url": server.url(f"img/{i}.jpg"), "label": f"c{i % 2}"} for i in range(45)]
    first_path = write_csv(tmp_path / "first.csv", first)
    output = tmp_path / "out"
    options = ("--label", "label", "--shard_size", "20")
    assert_ok(download(first_path, output, *options))
    assert len(shard_files(output, ".tar")) == 3
    before = snapshot(output)
    hits = sum(server.hits.values())
    assert hits >= len(first)

    # a finished run, run again: nothing downloaded, nothing rewritten
    again = download(first_path, output, *options)
    assert_ok(again)
    assert sum(server.hits.values()) == hits
    after = snapshot(output)
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    for name in [p.name for p in shard_files(output, ".tar")] + [
        p.name for p in shard_files(output, ".parquet") + shard_files(output, "_stats.json")
    ]:
        assert after[name][0] == before[name][0], f"{name} was rewritten"

    # another input on the same output is refused, and nothing changes
    second = [{"url": server.url(f"img/{50 + i}.jpg"), "label": "z"} for i in range(7)]
    second_path = write_csv(tmp_path / "second.csv", second)
    refused = download(second_path, output, *options)
    message = assert_one_line_error(refused)
    assert "--overwrite" in message, message
    assert {k: v[1] for k, v in snapshot(output).items()} == {k: v[1] for k, v in after.items()}

    # --overwrite starts over
    assert_ok(download(second_path, output, *options, "--overwrite"))
    by_key = check_results(output, second, 20)
    assert len(successes(by_key)) == len(second)
    assert [p.name for p in shard_files(output, ".tar")] == ["00000.tar"]
    assert [p.name for p in shard_files(output, "_stats.json")] == ["00000_stats.json"]
    assert len(load_webdataset(output)) == len(second)
    overview = json.loads((output / "overview.json").read_text())
    assert overview["download_summary"]["total"] == len(second)

    # a non-empty folder FLOW-DC did not make is refused, even with --overwrite
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("my notes")
    (foreign / "sub" / "data.bin").write_bytes(b"\x00\x01")
    (foreign / ".hidden").write_text("keep")
    untouched = snapshot(foreign)
    names = sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*"))
    for extra in ([], ["--overwrite"]):
        done = download(second_path, foreign, *options, *extra)
        message = assert_one_line_error(done)
        assert "not made by FLOW-DC" in message, message
        assert snapshot(foreign) == untouched
        assert sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*")) == names


@pytest.mark.parametrize("output_format", ["webdataset", "imagefolder", "parquet"])
def test_overwrite_deletes_only_what_flowdc_made(
    fresh_server: ImageServer, tmp_path: Path, output_format: str
) -> None:
    """A user's files put beside (or inside a class folder of) a dataset survive --overwrite;
    every file the old run made is gone or rewritten."""
    server = fresh_server
    rows = [{"url": server.url(f"img/{i}.jpg"), "label": f"c{i % 2}"} for i in range(12)]
    input_path = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out"
    options = ("--label", "label", "--shard_size", "5", "--output_format", output_format)
    assert_ok(download(input_path, output, *options))
    (output / "notes.txt").write_text("my notes")
    (output / "analysis").mkdir()
    (output / "analysis" / "plot.png").write_bytes(b"png")
    (output / "00001-mine.tar").write_bytes(b"mine")  # a name close to a shard's
    class_folder = next((p for p in output.iterdir() if p.is_dir() and p.name != "analysis"), None)
    if output_format == "imagefolder":
        assert class_folder is not None
        (class_folder / "README.md").write_text("about this class")
    made_before = {p.name for p in output.iterdir()} - {"notes.txt", "analysis", "00001-mine.tar"}

    fewer = write_csv(tmp_path / "fewer.csv", rows[:4])
    done = download(fewer, output, *options, "--overwrite")
    assert_ok(done)
    assert "--overwrite kept" in done.stderr + done.stdout
    assert (output / "notes.txt").read_text() == "my notes"
    assert (output / "analysis" / "plot.png").read_bytes() == b"png"
    assert (output / "00001-mine.tar").read_bytes() == b"mine"
    assert not (output / "00001.tar").exists() and not (output / "00002.parquet").exists()
    results = read_results(output)
    assert len(results) == 4
    if output_format == "imagefolder":
        assert (class_folder / "README.md").read_text() == "about this class"
        images = [p for p in output.rglob("*.jpg")]
        assert len(images) == 4  # the old run's 12 are gone
    elif output_format == "parquet":
        assert sum(parquet_image_keys(output).values()) == 4
        assert [p.name for p in output.glob("*.images.parquet")] == ["00000.images.parquet"]
    else:
        assert len(load_webdataset(output)) == 4
    assert made_before - {p.name for p in output.iterdir()} <= {
        "00001.tar", "00001.parquet", "00001_stats.json", "00002.tar",
        "00002.parquet", "00002_stats.json", "c0", "c1",
        "00001.images.parquet", "00002.images.parquet",
    }  # fmt: skip


# -- bad configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown_config_key", "shard_sise"),
        ("unknown_cli_option", "--shard_sise"),
        ("bad_value", "shard_size"),
        ("config_not_json", "not valid JSON"),
    ],
)
def test_bad_config_is_one_line_error(
    server: ImageServer, tmp_path: Path, case: str, needle: str
) -> None:
    input_path = write_csv(tmp_path / "urls.csv", [{"url": server.url("img/1.jpg")}])
    output = tmp_path / "out"
    config = tmp_path / "config.json"
    base = ["download", "--input", str(input_path), "--output", str(output)]
    if case == "unknown_config_key":
        config.write_text(json.dumps({"shard_sise": 10, "processes": 2}))
        args = [*base, "--config", str(config)]
    elif case == "unknown_cli_option":
        args = [*base, "--shard_sise", "10"]
    elif case == "bad_value":
        args = [*base, "--shard_size", "0"]
    else:
        config.write_text("{'shard_size': 10,}")
        args = [*base, "--config", str(config)]
    done = run_cli(*args, timeout=60)
    message = assert_one_line_error(done)
    assert needle in message, message
    assert not output.exists(), "a refused run must not create its output"


def test_imagefolder_rerun_removes_empty_label_folders(server: ImageServer, tmp_path: Path) -> None:
    """A killed shard may leave a label folder whose URLs fail on the rerun; torchvision would
    count the empty folder as a class (or refuse the dataset), so the run ends without it."""
    rows = [{"url": server.url(f"img/{i}.jpg"), "label": f"L{i % 3}"} for i in range(9)]
    rows.append({"url": server.url("status/404/gone.jpg"), "label": "rare"})
    input_path = write_csv(tmp_path / "urls.csv", rows)
    output = tmp_path / "out"
    options = ("--label", "label", "--output_format", "imagefolder")
    assert_ok(download(input_path, output, *options))
    (output / "rare").mkdir()  # what a killed shard's rerun can leave behind
    assert_ok(download(input_path, output, *options))
    folders = sorted(entry.name for entry in os.scandir(output) if entry.is_dir())
    entries = json.loads((output / "labels.json").read_text(encoding="utf-8"))
    indexed = sorted((e for e in entries if e["index"] is not None), key=lambda e: e["index"])
    assert folders == [e["folder"] for e in indexed] == ["L0", "L1", "L2"]
    check_imagefolder_rules(output)


def test_without_a_terminal_progress_is_a_line_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch job's log (stderr not a terminal, no bar) still shows the run moving; an explicit
    --no-progress (log=None) stays silent."""
    from flowdc.engines.base import Progress
    from flowdc.runner import _ProgressBar

    lines: list[str] = []
    monkeypatch.setattr(_ProgressBar, "LOG_EVERY", 0.0)
    bar = _ProgressBar(1000, enabled=False, log=lines.append)
    bar.update(Progress(successes=240, failures=10, bytes=25_000_000))
    bar.close()
    assert len(lines) == 1
    assert lines[0].startswith("250 of 1,000 rows (25.0%), ok 240, failed 10,")
    assert "img/s" in lines[0] and "MB/s" in lines[0]
    silent = _ProgressBar(1000, enabled=False, log=None)
    silent.update(Progress(successes=5))
    silent.close()
    monkeypatch.setattr(_ProgressBar, "LOG_EVERY", 3600.0)
    later = _ProgressBar(1000, enabled=False, log=lines.append)
    later.update(Progress(successes=5))
    later.close()
    assert len(lines) == 1


def test_an_input_without_rows_leaves_no_output_folder(tmp_path: Path) -> None:
    """The error names the problem, and the folder the run made for it is gone again; a folder
    that existed before is left as it was."""
    empty = tmp_path / "empty.csv"
    empty.write_text("url,label\n")
    output = tmp_path / "out"
    for _ in range(2):  # the second time into a folder that exists before the run
        done = download(empty, output)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "has no rows; nothing to download" in done.stderr
        assert output.exists() == (_ == 1)
        output.mkdir(exist_ok=True)
    assert output.is_dir() and not any(output.iterdir())
