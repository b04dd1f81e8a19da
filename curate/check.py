"""Verify outputs against what was recorded when they were written (`curate check`, `stats --verify`).

Every writer records the sha256 of each Parquet file it wrote (``part_hashes`` in dataset.json,
manifest.json, embeddings.json and scores.json) and seals the record with its own hash, so an edited record
is named too. Verification re-hashes the files and names the first one that is
missing, changed or not recorded. Outputs written before per-file hashes existed are checked with what they
do record: the combined ``parts_hash`` (subsets, embedding sets) or the content fingerprint (the dataset),
after reading every part, so a corrupt file is still named.
"""

from __future__ import annotations

from pathlib import Path

from curate.embedding_sets import INFO_NAME, check_set
from datasets_spec.errors import UserError
from datasets_spec.fingerprint import table_fingerprint
from datasets_spec.parts import list_parts, read_part, read_parts, read_record, verify_recorded_parts
from datasets_spec.workspace import Workspace

RECORDS = ("dataset.json", "manifest.json", "embeddings.json", "scores.json")


def verify_output(directory: Path) -> dict:
    """Verify one output directory (dataset, subset, embedding or score set); return what was checked."""
    directory = Path(directory)
    record_name = next((n for n in RECORDS if (directory / n).is_file()), None)
    if record_name is None:
        raise UserError(f"{directory}: no {', '.join(RECORDS)}; not an output of this tool")
    record = read_record(directory / record_name)
    if not list_parts(directory):
        raise UserError(f"{directory}: no part-*.parquet files")
    files, method = verify_recorded_parts(directory, record, record_name)
    if files:
        if record_name == INFO_NAME:  # the bytes are as written: does the record describe them?
            check_set(directory, record)
        return {"path": str(directory), "files": files, "method": method}
    for part in list_parts(directory):
        read_part(part)  # names the first unreadable part
    if record_name == "dataset.json" and record.get("fingerprint"):
        if table_fingerprint(read_parts(directory)) != record["fingerprint"]:
            raise UserError(f"{directory}: rows differ from the fingerprint recorded in dataset.json")
        return {"path": str(directory), "files": len(list_parts(directory)), "method": "fingerprint"}
    raise UserError(f"{directory / record_name}: records no hashes to verify against")


def verify_workspace(ws: Workspace) -> list[dict]:
    """Verify the dataset, every embedding set and every subset; the first bad file is a UserError."""
    ws.dataset_info()
    checked = [verify_output(ws.dataset_dir)]
    for root in (ws.embeddings_dir, ws.root / "scores", ws.shards_dir):
        if root.is_dir():
            for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if any((child / n).is_file() for n in RECORDS):
                    checked.append(verify_output(child))
    return checked
