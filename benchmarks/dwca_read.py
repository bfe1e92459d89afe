"""Planning a GBIF-sized Darwin Core Archive: time and peak memory against its size.

    .venv/bin/python benchmarks/dwca_read.py [--media 100000 1000000] [--repeat 3]

Generates, per size, a zip like a GBIF download: meta.xml, an occurrence core of
`media / 2` rows and GBIF's 223 columns (the values GBIF fills: ids, taxonomy, licence,
dates, coordinates; the rest empty) and a multimedia extension of `media` rows (two
images per occurrence, in another order than the core). Then, each in a fresh process, in
alternation: FLOW-DC planning the archive (`make_plan`, what `flowdc download` does before the
first request: read the archive, join, write the plan), and the notebook way it replaces
(pandas reads the core and the multimedia file whole and merges them). Prints the medians of
seconds and peak RSS (ru_maxrss of the process).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CORE_COLUMNS = 223
FILLED = {  # column index -> term local name, filled in every row
    0: "gbifID",
    4: "license",
    17: "basisOfRecord",
    21: "occurrenceID",
    22: "catalogNumber",
    62: "eventDate",
    84: "countryCode",
    97: "decimalLatitude",
    98: "decimalLongitude",
    148: "scientificName",
    156: "kingdom",
    161: "family",
    165: "genus",
    179: "datasetKey",
    191: "taxonKey",
    201: "species",
}
MEDIA = ("gbifID", "type", "format", "identifier", "references", "title", "description",
         "source", "audience", "created", "creator", "contributor", "publisher", "license",
         "rightsHolder")  # fmt: skip


def _meta() -> str:
    core = "".join(
        f'<field index="{i}" term="http://example.org/terms/{FILLED.get(i, f"t{i}")}"/>'
        for i in range(CORE_COLUMNS)
    )
    media = "".join(
        f'<field index="{i}" term="http://purl.org/dc/terms/{name}"/>'
        for i, name in enumerate(MEDIA)
        if i
    )
    common = 'encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" '
    common += 'fieldsEnclosedBy="" ignoreHeaderLines="1"'
    return (
        '<archive xmlns="http://rs.tdwg.org/dwc/text/">'
        f'<core {common} rowType="http://rs.tdwg.org/dwc/terms/Occurrence">'
        f'<files><location>occurrence.txt</location></files><id index="0"/>{core}</core>'
        f'<extension {common} rowType="http://rs.gbif.org/terms/1.0/Multimedia">'
        f'<files><location>multimedia.txt</location></files><coreid index="0"/>{media}'
        "</extension></archive>"
    )


def make_archive(path: Path, media_rows: int) -> None:
    occurrences = media_rows // 2
    rng = random.Random(7)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("meta.xml", _meta())
        with archive.open("occurrence.txt", "w") as out:
            out.write(("\t".join(f"c{i}" for i in range(CORE_COLUMNS)) + "\n").encode())
            for n in range(occurrences):
                cells = [""] * CORE_COLUMNS
                species = n % 5000
                values = {
                    "gbifID": str(1_000_000_000 + n),
                    "license": "CC_BY_4_0",
                    "basisOfRecord": "HUMAN_OBSERVATION",
                    "occurrenceID": f"https://example.org/occ/{n}",
                    "catalogNumber": f"C{n}",
                    "eventDate": "2024-05-17",
                    "countryCode": "FR",
                    "decimalLatitude": f"{rng.uniform(-60, 60):.5f}",
                    "decimalLongitude": f"{rng.uniform(-180, 180):.5f}",
                    "scientificName": f"Genus{species % 700} species{species} Author, 1901",
                    "kingdom": "Plantae",
                    "family": f"Family{species % 90}",
                    "genus": f"Genus{species % 700}",
                    "datasetKey": "b5cdf794-8fa4-4a85-8b26-755d087bf531",
                    "taxonKey": str(3_000_000 + species),
                    "species": f"Genus{species % 700} species{species}",
                }
                for index, name in FILLED.items():
                    cells[index] = values[name]
                out.write(("\t".join(cells) + "\n").encode())
        order = list(range(media_rows))
        rng.shuffle(order)
        with archive.open("multimedia.txt", "w") as out:
            out.write(("\t".join(MEDIA) + "\n").encode())
            for m in order:
                occurrence = 1_000_000_000 + m // 2
                cells = [str(occurrence), "StillImage", "image/jpeg",
                         f"https://images.example.org/{m}.jpg", "", "", "", "", "", "",
                         "A. Photographer", "", "", "http://creativecommons.org/licenses/by-nc/4.0/",
                         "A. Photographer"]  # fmt: skip
                out.write(("\t".join(cells) + "\n").encode())


FLOWDC = """
import json, resource, sys, time
from flowdc.config.options import DownloadConfig
from flowdc.planning.inputs import InputTable
from flowdc.planning.plan import make_plan
started = time.monotonic()
config = DownloadConfig(input=sys.argv[1], output=sys.argv[2], label="species")
plan = make_plan(config, InputTable(sys.argv[1], wanted=["species"]))
print(json.dumps({"rows": plan.total_rows, "seconds": time.monotonic() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
PANDAS = """
import json, resource, sys, time, zipfile
import pandas as pd
started = time.monotonic()
with zipfile.ZipFile(sys.argv[1]) as archive:
    core = pd.read_csv(archive.open("occurrence.txt"), sep="\\t", quoting=3, dtype=str)
    media = pd.read_csv(archive.open("multimedia.txt"), sep="\\t", quoting=3, dtype=str)
joined = media.merge(core, left_on="gbifID", right_on="c0", how="left", suffixes=("", "_occ"))
joined.to_parquet(sys.argv[2] + ".parquet")
print(json.dumps({"rows": len(joined), "seconds": time.monotonic() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(code: str, archive: Path, workdir: Path) -> dict[str, float]:
    output = Path(tempfile.mkdtemp(dir=workdir))
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive), str(output)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pandas", action="store_true", help="FLOW-DC only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowdc-dwca-bench-") as tmp:
        work = Path(tmp)
        for size in args.media:
            archive = work / f"gbif_{size}.zip"
            make_archive(archive, size)
            mb = archive.stat().st_size / 1e6
            runs: dict[str, list[dict[str, float]]] = {"flowdc": [], "pandas": []}
            for _ in range(args.repeat):
                runs["flowdc"].append(measure(FLOWDC, archive, work))
                if not args.no_pandas:
                    runs["pandas"].append(measure(PANDAS, archive, work))
            for name, results in runs.items():
                if not results:
                    continue
                assert all(r["rows"] == size for r in results), results
                seconds = statistics.median(r["seconds"] for r in results)
                peak = statistics.median(r["peak_mb"] for r in results)
                print(
                    f"{size:>9,} media rows ({mb:,.0f} MB zip), {name:>6}: {seconds:6.1f} s, "
                    f"{size / seconds:9,.0f} rows/s, peak RSS {peak:7,.0f} MB "
                    f"(median of {len(results)})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
