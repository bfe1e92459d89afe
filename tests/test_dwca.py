"""Darwin Core Archives as input, attribution.csv, the licence summary and --license_filter.

The archive is built here the way GBIF writes one (meta.xml, a tab-separated occurrence core,
a multimedia extension) with the quirks real archives have; its image URLs point at the test
server, and the downloads are real.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import flowdc
from flowdc.core.errors import FlowDCError
from flowdc.core.licenses import LicenseFilter, canonical, split_filter
from flowdc.planning.inputs import InputTable
from flowdc.testserver import ImageServer
from tests.conftest import QUICK_RUN, run_cli

# ../shared/data beside the project (a git worktree of it sits one folder deeper), or the
# workplace's shared folder when the checkout is elsewhere (a CI clone in /tmp)
_ROOT = Path(__file__).resolve().parents[1]
_PLACES = [p / "shared" / "data" for p in _ROOT.parents[:2]] + [Path("/work/shared/data")]
REAL_ARCHIVE = next(
    (path for path in (p / "gbif_dwca_mnhn.zip" for p in _PLACES) if path.is_file()),
    _ROOT.parent / "shared" / "data" / "gbif_dwca_mnhn.zip",
)
BY = "https://creativecommons.org/licenses/by/4.0/"
BY_NC = "https://creativecommons.org/licenses/by-nc/4.0/"
CC0 = "https://creativecommons.org/publicdomain/zero/1.0/"
DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"

META = """<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0" />
    <field default="WGS84" term="http://rs.tdwg.org/dwc/terms/geodeticDatum"/>
    <field index="0" term="http://rs.gbif.org/terms/1.0/gbifID"/>
    <field index="1" term="http://purl.org/dc/terms/license"/>
    <field index="2" term="http://purl.org/dc/terms/rightsHolder"/>
    <field index="3" term="http://rs.tdwg.org/dwc/terms/occurrenceID"/>
    <field index="4" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
    <field index="5" term="http://rs.tdwg.org/dwc/terms/family"/>
    <field index="6" term="http://rs.tdwg.org/dwc/terms/genus"/>
    <field index="7" term="http://rs.gbif.org/terms/1.0/species"/>
    <field index="8" term="http://rs.gbif.org/terms/1.0/taxonKey"/>
    <field index="9" term="http://rs.tdwg.org/dwc/terms/habitat"/>
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\r\\n"
        fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0" />
    <field index="1" term="http://purl.org/dc/terms/type"/>
    <field index="2" term="http://purl.org/dc/terms/format"/>
    <field index="3" term="http://purl.org/dc/terms/identifier"/>
    <field index="4" term="http://purl.org/dc/terms/references"/>
    <field index="5" term="http://purl.org/dc/terms/title"/>
    <field index="6" term="http://purl.org/dc/terms/creator"/>
    <field index="7" term="http://purl.org/dc/terms/license"/>
    <field index="8" term="http://purl.org/dc/terms/rightsHolder"/>
  </extension>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n"
        fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>verbatim.txt</location></files>
    <coreid index="0" />
  </extension>
</archive>
"""
# gbifID, license, rightsHolder, occurrenceID, scientificName, family, genus, species, taxonKey,
# habitat, and one column meta.xml does not map (real cores have many).
CORE = [
    ["1", "CC_BY_4_0", "Museum A", "urn:occ:1", "Rosa canina L.", "Rosaceae", "Rosa",
     "Rosa canina", "3003", 'a "hedge', "x"],
    ["2", "CC_BY_NC_4_0", "", "urn:occ:2", "Quercus robur L.", "Fagaceae", "Quercus",
     "Quercus robur", "2878", "", "x"],
    ["3", "CC0_1_0", "", "urn:occ:3", "Pinus nigra", "Pinaceae", "Pinus", "Pinus nigra",
     "5285", "", "x"],  # an occurrence without media
    ["4", "CC_BY_4_0", "", "urn:occ:4", "Bellis", "Asteraceae", "Bellis", "", "3117", "", "x"],
]  # fmt: skip


def _media(server: ImageServer) -> list[list[str]]:
    """coreid, type, format, identifier, references, title, creator, license, rightsHolder,
    and an extra unmapped column. Expected fate in the last comment of each row."""
    url = server.url
    return [
        ["1", "StillImage", "image/jpeg", url("img/0.jpg"), "https://example.org/m/0",
         'a "quoted title', "Ann Photo", "http://creativecommons.org/licenses/by/4.0/", "", "e"],
        ["1", "StillImage", "image/jpeg", url("img/1.jpg", host=1), "", "", "Bo Snap",
         "CC-BY-NC 4.0", "Bo", "e"],  # licence in words; BY-NC
        ["1", "Sound", "audio/mpeg", url("img/2.jpg"), "", "", "", "CC0", "", "e"],  # left out
        ["2", "", "image/png", url("img/pic.png"), "", "", "Cy Lens",
         "http://creativecommons.org/publicdomain/zero/1.0/", "", "e"],  # no type, image format
        ["2", "StillImage", "", url("img/3.jpg"), "", "", "", "", "", "e"],  # licence from core
        ["2", "StillImage", "image/jpeg", "", "", "", "", "CC0", "", "e"],  # no URL: invalid_url
        ["4", "MovingImage", "video/mp4", url("img/4.jpg"), "", "", "", "CC0", "", "e"],  # out
        ["4", "StillImage", "image/jpeg", url("img/5.jpg"), "", "", "", "CC_BY_4_0", "", ""],
        ["9", "StillImage", "image/jpeg", url("img/6.jpg"), "", "", "", "CC0", "", "e"],  # orphan
        ["1", "", "", url("status/404/gone.jpg"), "", "", "", "CC0", "", "e"],  # says nothing
    ]  # fmt: skip


IMAGE_ROWS = 8  # the media rows above that are images (or say nothing)


def build_archive(folder: Path, server: ImageServer, *, zipped: bool = True) -> Path:
    """A GBIF-like archive: folder/archive.zip (or the folder itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.xml").write_text(META, encoding="utf-8")
    header = "\t".join(f"h{i}" for i in range(11))
    core = [header, *("\t".join(row) for row in CORE)]
    (folder / "occurrence.txt").write_text("\n".join(core) + "\n", encoding="utf-8")
    media = [header[:40], *("\t".join(row) for row in _media(server))]
    (folder / "multimedia.txt").write_bytes(("\r\n".join(media) + "\r\n").encode())
    (folder / "verbatim.txt").write_text("gbifID\n1\n", encoding="utf-8")
    if not zipped:
        return folder
    archive = folder / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zipped_file:
        for name in ("meta.xml", "occurrence.txt", "multimedia.txt", "verbatim.txt"):
            zipped_file.write(folder / name, name)
    return archive


def _table(path: Path, wanted: tuple[str, ...] = ("species",)) -> pa.Table:
    table = InputTable(path, wanted=wanted)
    return pa.Table.from_batches(list(table.batches()), schema=None)


# -- reading ------------------------------------------------------------------------------------
def test_archive_rows_join_occurrences(server: ImageServer, tmp_path: Path) -> None:
    table = InputTable(build_archive(tmp_path, server, zipped=True), wanted=["habitat"])
    assert table.format == "dwca"
    rows = pa.Table.from_batches(list(table.batches())).to_pylist()
    assert len(rows) == IMAGE_ROWS
    assert table.notes == [
        "2 of 10 multimedia rows of archive.zip are not images (sound, video, or a format "
        "that is not image/*) and were left out"
    ]
    first = rows[0]
    assert first["url"].endswith("/img/0.jpg") and first["coreid"] == "1"
    assert first["species"] == "Rosa canina" and first["family"] == "Rosaceae"
    assert first["habitat"] == 'a "hedge'  # a wanted core term beyond the kept set
    assert first["title"] == 'a "quoted title'  # a stray quote swallows nothing
    assert first["creator"] == "Ann Photo" and first["references"] == "https://example.org/m/0"
    assert first["media_type"] == "StillImage" and first["media_format"] == "image/jpeg"
    assert first["rightsHolder"] == "Museum A"  # empty in the media row: the occurrence's
    assert rows[1]["rightsHolder"] == "Bo"
    by_url = {row["url"]: row for row in rows}
    assert by_url[server.url("img/3.jpg")]["license"] == "CC_BY_NC_4_0"  # from the occurrence
    no_url = [row for row in rows if row["url"] is None]
    assert len(no_url) == 1 and no_url[0]["coreid"] == "2"
    orphan = by_url[server.url("img/6.jpg")]
    assert orphan["coreid"] == "9" and orphan["species"] is None
    assert not any(row["url"] and row["url"].endswith(("2.jpg", "4.jpg")) for row in rows)
    assert "geodeticDatum" not in first  # a default-only field outside the kept set
    assert by_url[server.url("img/5.jpg")]["species"] is None  # empty species: no label


def test_folder_and_prefixed_zip_read_like_the_zip(server: ImageServer, tmp_path: Path) -> None:
    archive = build_archive(tmp_path / "a", server)
    folder = build_archive(tmp_path / "b", server, zipped=False)
    prefixed = tmp_path / "prefixed.zip"  # a user zipped the unpacked folder again
    with zipfile.ZipFile(prefixed, "w") as out, zipfile.ZipFile(archive) as inner:
        for name in inner.namelist():
            out.writestr(f"download/{name}", inner.read(name))
    expected = _table(archive).to_pylist()
    assert _table(folder).to_pylist() == expected
    assert _table(prefixed).to_pylist() == expected


def test_default_only_field_gives_every_row_its_value(server: ImageServer, tmp_path: Path) -> None:
    rows = _table(build_archive(tmp_path, server), ("geodeticDatum",)).to_pylist()
    assert {row["geodeticDatum"] for row in rows if row["species"]} == {"WGS84"}


def test_audubon_core_access_uri(tmp_path: Path) -> None:
    meta = META.replace(
        "http://rs.gbif.org/terms/1.0/Multimedia", "http://rs.tdwg.org/ac/terms/Multimedia"
    )
    meta = meta.replace(f"{DC}identifier", "http://rs.tdwg.org/ac/terms/accessURI")
    meta = meta.replace(f"{DC}license", "http://ns.adobe.com/xap/1.0/rights/UsageTerms", 2)
    meta = meta.replace(f'index="1" term="{DC}license"', f'index="1" term="{DC}license"')
    (tmp_path / "meta.xml").write_text(meta, encoding="utf-8")
    (tmp_path / "occurrence.txt").write_text("h\n" + "\t".join(CORE[0]) + "\n", encoding="utf-8")
    row = ["1", "http://purl.org/dc/dcmitype/StillImage", "", "http://x.test/a.jpg", "", "", "",
           "CC0", ""]  # fmt: skip
    (tmp_path / "multimedia.txt").write_text("h\r\n" + "\t".join(row) + "\r\n", encoding="utf-8")
    (tmp_path / "verbatim.txt").write_text("h\n", encoding="utf-8")
    rows = _table(tmp_path).to_pylist()
    assert [(r["url"], r["license"], r["species"]) for r in rows] == [
        ("http://x.test/a.jpg", "CC0", "Rosa canina")
    ]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_meta", "holds no meta.xml: it is not a Darwin Core Archive"),
        ("no_media_file", "meta.xml names multimedia.txt, which the archive does not hold"),
        ("no_extension", "has no multimedia extension"),
        ("not_zip", "is not a readable zip file"),
    ],
)
def test_broken_archives_are_one_line_errors(
    server: ImageServer, tmp_path: Path, damage: str, message: str
) -> None:
    build_archive(tmp_path / "src", server)
    names = ["meta.xml", "occurrence.txt", "multimedia.txt", "verbatim.txt"]
    archive = tmp_path / "broken.zip"
    if damage == "not_zip":
        archive.write_text("gbifID\n1\n", encoding="utf-8")
    else:
        with zipfile.ZipFile(archive, "w") as out:
            for name in names:
                data = (tmp_path / "src" / name).read_text(encoding="utf-8")
                if (damage, name) in (("no_meta", "meta.xml"), ("no_media_file", "multimedia.txt")):
                    continue
                if damage == "no_extension" and name == "meta.xml":
                    data = data.replace("terms/1.0/Multimedia", "terms/1.0/Identifier")
                out.writestr(name, data)
    with pytest.raises(FlowDCError, match=re.escape(message)):
        InputTable(archive)


def test_label_term_the_core_lacks_is_a_one_line_error(server: ImageServer, tmp_path: Path) -> None:
    archive = build_archive(tmp_path, server)
    done = run_cli("download", "--input", str(archive), "--output", str(tmp_path / "out"),
                   "--label", "specis")  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "'specis' is not a term of" in lines[0] and "species" in lines[0]
    assert "--label" in lines[0]


@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason=f"the real GBIF archive {REAL_ARCHIVE} "
                    "is not in this checkout's ../shared/data")  # fmt: skip
def test_real_gbif_archive_parses_to_1012_labelled_images() -> None:
    table = InputTable(REAL_ARCHIVE, wanted=["species"])
    rows = pa.Table.from_batches(list(table.batches()))
    assert rows.num_rows == 1012
    assert rows.column("url").null_count == 0
    assert set(rows.column("species").to_pylist()) == {"Rosa corymbifera"}
    assert len(set(rows.column("url").to_pylist())) == 1012
    licences = Counter(canonical(v) for v in rows.column("license").to_pylist())
    assert licences == {BY: 943, "https://creativecommons.org/licenses/by-nc-nd/4.0/": 69}
    assert table.notes == []


# -- licences -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://creativecommons.org/licenses/by-nc/4.0/", BY_NC),
        ("CC-BY-NC 4.0", BY_NC),
        ("CC_BY_NC_4_0", BY_NC),
        ("cc by-nc 4.0", BY_NC),
        ("Creative Commons Attribution-NonCommercial 4.0 International", BY_NC),
        ("https://creativecommons.org/licenses/by-nc/4.0/legalcode", BY_NC),
        ("CC0", CC0),
        ("CC0_1_0", CC0),
        ("http://creativecommons.org/publicdomain/zero/1.0/legalcode", CC0),
        ("CC-BY-4.0", BY),
        ("  All   rights reserved ", "All rights reserved"),
        ("", "(none)"),
        (None, "(none)"),
    ],
)
def test_licences_are_normalised(text: str | None, expected: str) -> None:
    assert canonical(text) == expected


def test_license_filter_matches_family_and_version() -> None:
    allowed = LicenseFilter(split_filter("cc0 cc-by"))
    assert allowed.allows("CC_BY_4_0") and allowed.allows(
        "http://creativecommons.org/licenses/by/2.0/"
    )
    assert allowed.allows("CC0 1.0")
    assert not allowed.allows("CC-BY-NC 4.0") and not allowed.allows("CC-BY-SA-4.0")
    assert not allowed.allows("") and not allowed.allows(None)
    versioned = LicenseFilter(split_filter("CC-BY-4.0, All rights reserved"))
    assert versioned.allows("CC-BY 4.0") and not versioned.allows("CC-BY 3.0")
    assert versioned.allows("all rights  reserved")
    with pytest.raises(FlowDCError, match="'CC-BU' is not a Creative Commons licence"):
        LicenseFilter(["CC-BU"])


def test_bad_license_filter_is_a_one_line_error(tmp_path: Path) -> None:
    urls = tmp_path / "urls.csv"
    urls.write_text("url,license\nhttp://127.0.0.1:9/a.jpg,CC0\n", encoding="utf-8")
    done = run_cli("download", "--input", str(urls), "--output", str(tmp_path / "o"),
                   "--license_filter", "CC-BU")  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "license_filter" in done.stderr and "CC-BU" in done.stderr
    plain = tmp_path / "plain.csv"
    plain.write_text("url\nhttp://127.0.0.1:9/a.jpg\n", encoding="utf-8")
    done = run_cli("download", "--input", str(plain), "--output", str(tmp_path / "p"),
                   "--license_filter", "CC0")  # fmt: skip
    assert done.returncode == 2 and "no column license" in done.stderr, done.stderr


# -- downloads ----------------------------------------------------------------------------------
def _download(archive: Path, output: Path, **options: Any) -> flowdc.DownloadResult:
    return flowdc.download(
        input=str(archive),
        output=str(output),
        label="species",
        shard_size=3,
        processes=1,
        timeout=5,
        max_retry_attempts=0,
        enable_rate_limiting=False,
        progress=False,
        **options,
    )


def _results(output: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(output.glob("[0-9][0-9][0-9][0-9][0-9].parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def _attribution(output: Path) -> list[dict[str, str]]:
    with open(output / "attribution.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def archive_run(server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("dwca")
    archive = build_archive(base / "archive", server)
    output = base / "out"
    _download(archive, output, croissant="comprehensive_croissant", dataset_creator="tests",
              dataset_name="Roses", dataset_description="A test")  # fmt: skip
    return {"archive": archive, "output": output, "results": _results(output)}


def test_archive_download_labels_and_statuses(archive_run: dict[str, Any]) -> None:
    rows = archive_run["results"]
    assert len(rows) == IMAGE_ROWS and len({row["key"] for row in rows}) == IMAGE_ROWS
    by_url = {row["url"]: row for row in rows}
    statuses = Counter(row["status"] for row in rows)
    assert statuses == {"success": 6, "invalid_url": 1, "failed_to_download": 1}
    assert (
        by_url[next(u for u in by_url if u and u.endswith("img/0.jpg"))]["label"] == "Rosa canina"
    )
    labels = json.loads((archive_run["output"] / "labels.json").read_text(encoding="utf-8"))
    assert [entry["label"] for entry in labels] == ["Quercus robur", "Rosa canina"]
    assert all("license" in row and "creator" in row for row in rows)  # travel to the results
    first = next(row for row in rows if row["url"] and row["url"].endswith("/img/0.jpg"))
    with tarfile.open(archive_run["output"] / "00000.tar") as tar:
        member = tar.extractfile(f"{first['key']}.json")
        assert member is not None
        sample = json.loads(member.read())
    assert sample["license"] == "http://creativecommons.org/licenses/by/4.0/"
    assert sample["creator"] == "Ann Photo" and sample["label"] == "Rosa canina"
    assert sample["gbifID"] == "1" and sample["family"] == "Rosaceae"


def test_attribution_table_lists_every_stored_image(archive_run: dict[str, Any]) -> None:
    stored = {row["key"]: row for row in archive_run["results"] if row["status"] == "success"}
    lines = _attribution(archive_run["output"])
    assert [line["key"] for line in lines] == sorted(stored)
    by_tail = {line["url"].rsplit("/", 1)[-1]: line for line in lines}
    assert by_tail["0.jpg"] == {
        "key": by_tail["0.jpg"]["key"],
        "path": stored[by_tail["0.jpg"]["key"]]["path"],
        "url": stored[by_tail["0.jpg"]["key"]]["url"],
        "license": BY,
        "license_name": "CC-BY-4.0",
        "rightsHolder": "Museum A",
        "creator": "Ann Photo",
        "publisher": "",
        "title": 'a "quoted title',
        "source_record": "https://example.org/m/0",
    }
    assert by_tail["1.jpg"]["license"] == BY_NC and by_tail["1.jpg"]["rightsHolder"] == "Bo"
    assert by_tail["1.jpg"]["source_record"] == "https://www.gbif.org/occurrence/1"
    assert by_tail["pic.png"]["license"] == CC0 and by_tail["pic.png"]["creator"] == "Cy Lens"
    assert by_tail["3.jpg"]["license"] == BY_NC  # the occurrence's licence
    assert by_tail["6.jpg"]["source_record"] == ""  # an orphan row: no occurrence to cite
    assert all(line["license"] for line in lines)


def test_overview_report_and_croissant_state_the_licences(archive_run: dict[str, Any]) -> None:
    output = archive_run["output"]
    overview = json.loads((output / "overview.json").read_text(encoding="utf-8"))
    licences = overview["licenses"]
    assert licences["column"] == "license" and licences["filter"] is None
    assert licences["counts"] == {
        CC0: {"name": "CC0-1.0", "rows": 4, "images": 2},
        BY: {"name": "CC-BY-4.0", "rows": 2, "images": 2},
        BY_NC: {"name": "CC-BY-NC-4.0", "rows": 2, "images": 2},
    }
    assert overview["input"]["format"] == "dwca"
    report = (output / "report.html").read_text(encoding="utf-8")
    assert 'id="licenses"' in report and "CC-BY-NC-4.0" in report
    doc = json.loads((output / "croissant.json").read_text(encoding="utf-8"))
    assert sorted(doc["license"]) == sorted([CC0, BY, BY_NC])
    fields = {f["name"] for s in doc["recordSet"] for f in s["field"]}
    assert {"license", "creator", "rightsHolder"} <= fields


def test_croissant_with_image_licences_validates(
    archive_run: dict[str, Any], tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld",
         str(archive_run["output"] / "croissant.json")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CROISSANT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert not re.search(r"^[WE]\d{4} ", text, re.MULTILINE), text
    assert "warning" not in text.lower(), text


def test_attribution_is_the_same_after_a_resume(
    archive_run: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    shutil.copytree(archive_run["output"], output)
    (output / "00001_stats.json").unlink()  # shard 1 was never committed
    (output / "00001.parquet").unlink()
    (output / "attribution.csv").unlink()
    described = {"dataset_creator": "tests", "dataset_name": "Roses", "dataset_description": "A"}
    _download(archive_run["archive"], output, croissant="comprehensive_croissant", **described)
    assert _attribution(output) == _attribution(archive_run["output"])


def test_license_filter_keeps_only_the_listed_licences(
    archive_run: dict[str, Any], tmp_path: Path
) -> None:
    output = tmp_path / "filtered"
    result = _download(archive_run["archive"], output, license_filter="CC0,CC-BY")
    rows = _results(output)
    assert len(rows) == IMAGE_ROWS and len({row["key"] for row in rows}) == IMAGE_ROWS
    filtered = sorted(
        (row["url"] or "").rsplit("/", 1)[-1] for row in rows if row["status"] == "license_filtered"
    )
    assert filtered == ["1.jpg", "3.jpg"]  # CC-BY-NC, from the media row and from the occurrence
    assert all(canonical(r["license"]) in (CC0, BY) for r in rows if r["status"] == "success")
    assert result.successful == 4
    overview = json.loads((output / "overview.json").read_text(encoding="utf-8"))
    assert overview["error_breakdown"]["license_filtered"] == 2
    assert overview["licenses"]["filter"] == ["CC0-1.0", "CC-BY"]
    assert {line["license"] for line in _attribution(output)} == {CC0, BY}


def test_rows_without_licence_are_filtered(fresh_server: ImageServer, tmp_path: Path) -> None:
    server = fresh_server
    urls = tmp_path / "urls.csv"
    urls.write_text(
        "url,license,author\n"
        f"{server.url('img/10.jpg')},CC0,Dee\n"
        f"{server.url('img/11.jpg')},,Eve\n"
        f"{server.url('img/12.jpg')},CC-BY-SA 4.0,Fay\n",
        encoding="utf-8",
    )
    output = tmp_path / "out"
    flowdc.download(input=str(urls), output=str(output), processes=1, progress=False,
                    license_filter="cc0", max_retry_attempts=0)  # fmt: skip
    statuses = {row["url"].rsplit("/", 1)[-1]: row["status"] for row in _results(output)}
    assert statuses == {"10.jpg": "success", "11.jpg": "license_filtered",
                        "12.jpg": "license_filtered"}  # fmt: skip
    lines = _attribution(output)
    assert [(line["license"], line["creator"]) for line in lines] == [(CC0, "Dee")]
    assert server.hits["/img/10.jpg"] == 1  # filtered rows are never requested
    assert server.hits["/img/11.jpg"] == 0 and server.hits["/img/12.jpg"] == 0


FORMULAS = ['=HYPERLINK("http://evil.test","x")', "@SUM(1+1)", "+1+2", "-3+4", "\t=1+1",
            "\r=1+1"]  # fmt: skip


def _libreoffice_formulas(attribution: Path, scratch: Path) -> list[str]:
    """The cells LibreOffice reads as formulas when it opens the CSV (converted to xlsx)."""
    import openpyxl

    office = shutil.which("soffice") or shutil.which("libreoffice")
    if office is None:
        pytest.skip("LibreOffice is not installed (Debian: libreoffice-calc-nogui)")
    try:
        subprocess.run(
            [office, f"-env:UserInstallation=file://{scratch / 'profile'}", "--headless",
             "--convert-to", "xlsx", "--outdir", str(scratch), str(attribution)],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("LibreOffice took over a minute to convert one CSV")
    book = openpyxl.load_workbook(scratch / "attribution.xlsx")
    return [
        f"{cell.coordinate}: {cell.value}"
        for row in book.active.iter_rows()
        for cell in row
        if cell.data_type == "f"
    ]


def test_attribution_cells_never_start_a_formula(server: ImageServer, tmp_path: Path) -> None:
    """attribution.csv is opened in spreadsheets: a creator, rights holder or title from the
    list that starts like a formula is quoted (OWASP's CSV-injection rule), still readable; the
    report shows the same text escaped."""
    count = len(FORMULAS)
    pq.write_table(
        pa.table(
            {
                "url": [server.url(f"img/{i}.jpg") for i in range(count)],
                "label": ['<img src=x onerror="alert(1)">'] * count,
                "license": ["CC-BY"] * count,
                "creator": FORMULAS,
                "rightsHolder": FORMULAS[::-1],
                "title": [f"{value} title" for value in FORMULAS],
                "gbifID": pa.array(range(100, 100 + count), pa.int64()),  # a number, not text
            }
        ),
        tmp_path / "urls.parquet",
    )
    output = tmp_path / "out"
    result = flowdc.download(input=str(tmp_path / "urls.parquet"), output=str(output),
                             label="label", **QUICK_RUN, progress=False)  # fmt: skip
    assert result.successful == count
    with open(output / "attribution.csv", encoding="utf-8", newline="") as handle:
        cells = list(csv.reader(handle))
    assert len(cells) == count + 1
    starts = [c for line in cells for c in line if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert starts == []
    lines = _attribution(output)
    assert sorted(line["creator"] for line in lines) == sorted("'" + v for v in FORMULAS)
    assert sorted(line["title"] for line in lines) == sorted(f"'{v} title" for v in FORMULAS)
    assert sorted(line["source_record"] for line in lines) == [
        f"https://www.gbif.org/occurrence/{100 + i}" for i in range(count)
    ]
    report = (output / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in report and "&lt;img src=x" in report
    assert _libreoffice_formulas(output / "attribution.csv", tmp_path) == []


def test_dask_engine_writes_the_same_attribution_and_filter(
    archive_run: dict[str, Any], tmp_path: Path
) -> None:
    local = tmp_path / "local"
    distributed = tmp_path / "dask"
    _download(archive_run["archive"], local, license_filter="CC-BY-NC,cc0")
    _download(archive_run["archive"], distributed, license_filter="CC-BY-NC,cc0", engine="dask")
    assert _attribution(distributed) == _attribution(local)
    statuses = {row["key"]: row["status"] for row in _results(local)}
    assert {row["key"]: row["status"] for row in _results(distributed)} == statuses
    assert Counter(statuses.values())["license_filtered"] == 2  # the two CC-BY rows
    overview = json.loads((distributed / "overview.json").read_text(encoding="utf-8"))
    assert overview["licenses"]["counts"][BY] == {"name": "CC-BY-4.0", "rows": 2, "images": 0}


def test_no_licence_warning_when_the_images_licences_are_stated() -> None:
    from flowdc.config.loading import build_config
    from flowdc.metadata.croissant import croissant_warnings

    config = build_config({"input": "a.zip", "output": "o", "dataset_creator": "me"})
    assert any("dataset_license" in w for w in croissant_warnings(config))
    assert croissant_warnings(config, image_licenses=True) == []


def test_quoted_csv_archive(tmp_path: Path) -> None:
    """Some publishers write comma-separated files with quotes: meta.xml says so."""
    meta = META.replace('fieldsTerminatedBy="\\t"', 'fieldsTerminatedBy=","')
    meta = meta.replace('fieldsEnclosedBy=""', "fieldsEnclosedBy='\"'")
    (tmp_path / "meta.xml").write_text(meta, encoding="utf-8")
    core = 'id,a,b,c,"Rosa canina L., 1753",Rosaceae,Rosa,"Rosa canina",3003,,\n'
    (tmp_path / "occurrence.txt").write_text("h\n" + core, encoding="utf-8")
    media = '1,StillImage,image/jpeg,http://x.test/a.jpg,,"Title, with comma",,CC0,\r\n'
    (tmp_path / "multimedia.txt").write_text("h\r\n" + media.replace("1,", "id,", 1), "utf-8")
    (tmp_path / "verbatim.txt").write_text("h\n", encoding="utf-8")
    rows = _table(tmp_path, ("scientificName",)).to_pylist()
    assert [(r["url"], r["title"], r["scientificName"]) for r in rows] == [
        ("http://x.test/a.jpg", "Title, with comma", "Rosa canina L., 1753")
    ]


def test_deflate64_zip_says_to_unzip_it(server: ImageServer, tmp_path: Path) -> None:
    """Python's zipfile cannot read Deflate64 (method 9), which GBIF uses for huge downloads."""
    build_archive(tmp_path / "src", server, zipped=False)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for name in ("meta.xml", "occurrence.txt", "multimedia.txt", "verbatim.txt"):
            out.write(tmp_path / "src" / name, name)
    data = bytearray(archive.read_bytes())
    entry = data.index(b"PK\x01\x02")
    while entry != -1:  # mark occurrence.txt as Deflate64 in the central directory
        name_length = int.from_bytes(data[entry + 28 : entry + 30], "little")
        if data[entry + 46 : entry + 46 + name_length] == b"occurrence.txt":
            data[entry + 10 : entry + 12] = (9).to_bytes(2, "little")
        entry = data.find(b"PK\x01\x02", entry + 4)
    archive.write_bytes(bytes(data))
    done = run_cli("download", "--input", str(archive), "--output", str(tmp_path / "o"),
                   "--label", "species")  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]  # after "planning ..."
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith("flowdc: error: ") and "occurrence.txt" in last
    assert "unzip the archive" in last


def test_flowdc_validate_accepts_the_archive_output(archive_run: dict[str, Any]) -> None:
    done = run_cli("validate", str(archive_run["output"]))
    assert done.returncode == 0, done.stdout + done.stderr


def _big_archive(path: Path, media_rows: int) -> Path:
    """meta.xml, a 30-column core of media_rows / 2 occurrences, two images each (shuffled)."""
    terms = ["gbifID", "species", "family", "license", *(f"t{i}" for i in range(26))]
    fields = "".join(
        f'<field index="{i}" term="http://rs.tdwg.org/dwc/terms/{t}"/>' for i, t in enumerate(terms)
    )
    meta = META.split("<core")[0] + (
        '<core fieldsTerminatedBy="\\t" ignoreHeaderLines="1" rowType="x"><files><location>'
        f'occurrence.txt</location></files><id index="0"/>{fields}</core>'
        '<extension fieldsTerminatedBy="\\t" ignoreHeaderLines="1" '
        'rowType="http://rs.gbif.org/terms/1.0/Multimedia"><files><location>multimedia.txt'
        '</location></files><coreid index="0"/>'
        f'<field index="1" term="{DC}identifier"/><field index="2" term="{DC}license"/>'
        "</extension></archive>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("meta.xml", meta)
        filler = "\t" * 26
        archive.writestr(
            "occurrence.txt",
            "h\n"
            + "".join(
                f"{n}\tSpecies {n % 99}\tFam\tCC_BY_4_0{filler}\n" for n in range(media_rows // 2)
            ),
        )
        order = random.Random(1).sample(range(media_rows), media_rows)
        archive.writestr(
            "multimedia.txt",
            "h\n" + "".join(f"{m // 2}\thttps://img.test/{m}.jpg\t\n" for m in order),
        )
    return path


def test_reading_an_archive_holds_one_batch_not_the_archive(tmp_path: Path) -> None:
    """Python memory while streaming 60,000 images is that of 20,000: one batch at a time."""
    peaks = {}
    for rows in (1_000, 20_000, 60_000):  # the first warms up (pyarrow imports pandas once)
        table = InputTable(_big_archive(tmp_path / f"{rows}.zip", rows), wanted=["species"])
        tracemalloc.start()
        seen = labelled = 0
        for batch in table.batches():
            seen += batch.num_rows
            labelled += batch.num_rows - batch.column("species").null_count
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seen == labelled == rows
    assert peaks[60_000] < 1.3 * peaks[20_000], peaks


def test_output_inside_an_unzipped_gbif_download_resumes(
    fresh_server: ImageServer, tmp_path: Path
) -> None:
    """`--input gbif --output gbif/images`: the folder's fingerprint took in the output's own
    files, so every rerun (a resume after a crash, --retry_failed) was refused as another input."""
    from tests.test_dwca import IMAGE_ROWS, build_archive

    folder = build_archive(tmp_path / "gbif", fresh_server, zipped=False)
    output = folder / "images"
    first = flowdc.download(input=str(folder), output=str(output), label="species", **QUICK_RUN)
    assert first.total == IMAGE_ROWS
    hits = sum(fresh_server.hits.values())

    again = flowdc.download(input=str(folder), output=str(output), label="species", **QUICK_RUN)
    retried = flowdc.download(
        input=str(folder), output=str(output), label="species", retry_failed=True, **QUICK_RUN
    )

    assert (again.successful, retried.successful) == (first.successful, first.successful)
    assert sum(fresh_server.hits.values()) == hits
    (folder / "occurrence.txt").write_text("changed\n")  # the archive itself still counts
    with pytest.raises(FlowDCError, match="input fingerprint"):
        flowdc.download(input=str(folder), output=str(output), label="species", **QUICK_RUN)
