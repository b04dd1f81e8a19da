"""Outputs that cannot destroy their own inputs: the one check every command runs before it writes.

Two rules, for every command that writes (ingest, embed, select, rules, export, train run/merge, ablate):

1. An output path given by the user (``--out``) may not be, contain, or lie inside a workspace's managed
   folders (:data:`MANAGED_FOLDERS`) or any of the command's own sources (the subset being exported, the
   image root it copies from, the run being merged). Paths are compared after resolving symlinks, so a
   link pointing into ``dataset/`` is refused like ``dataset/`` itself.
2. ``--overwrite`` only ever replaces a previous output of the same kind, recognised by its marker file
   (``dataset.json``, ``manifest.json``, ``embeddings.json``, ``llava_bundle.json``, the export marker
   ...). Anything else in the way is refused, with or without ``--overwrite``.

Writers also call :func:`clean_stale_temps`: temporary names (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``)
left by a run that was killed are removed, and a previous output a killed run had moved aside to swap in
the new one is put back, so nothing is lost and nothing accumulates.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from datasets_spec.errors import UserError
from datasets_spec.safe_json import load_json_file

# The folders a workspace owns (DESIGN.md "The workspace"), plus the synthetic dataset's generated source,
# which is that dataset's image root.
MANAGED_FOLDERS = ("dataset", "embeddings", "scores", "shards", "runs", "reports", "synthetic-source")
# What marks a directory as a workspace, for outputs whose workspace is not named on the command line.
WORKSPACE_MARKER = Path("dataset") / "dataset.json"
EXPORT_MARKER = ".curate-export.json"
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _overlap(a: Path, b: Path) -> str | None:
    """How ``a`` relates to ``b``: "is", "contains", "lies inside", or None when they are apart."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def protected_paths(workspaces: Iterable[str | os.PathLike]) -> list[Path]:
    """The managed folders of each workspace root (whether or not they exist yet)."""
    return [_real(root) / name for root in workspaces for name in MANAGED_FOLDERS]


def _enclosing_workspace_folder(out: Path) -> Path | None:
    """A managed folder of some workspace (one holding dataset/dataset.json) that ``out`` is or lies in."""
    for folder in (out, *out.parents):
        if folder.name in MANAGED_FOLDERS and (folder.parent / WORKSPACE_MARKER).is_file():
            return folder
    return None


def check_output_path(
    out: str | os.PathLike,
    *,
    workspaces: Iterable[str | os.PathLike] = (),
    sources: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
) -> Path:
    """Refuse ``out`` if it is, contains or lies inside a managed folder or a source; return it resolved.

    ``workspaces`` are the roots whose managed folders are protected; any other workspace ``out`` would
    land in (a directory holding dataset/dataset.json) is recognised on the way up from ``out``.
    """
    real = _real(out)
    for folder in protected_paths(workspaces):
        how = _overlap(real, folder)
        if how:
            raise UserError(
                f"{option} {out}: {how} the workspace folder {folder}, which the tool manages; "
                "choose a path outside dataset/, embeddings/, scores/, shards/, runs/ and reports/"
            )
    found = _enclosing_workspace_folder(real)
    if found is not None:
        raise UserError(f"{option} {out}: lies inside the workspace folder {found}, which the tool manages")
    if (real / WORKSPACE_MARKER).is_file():
        raise UserError(f"{option} {out}: is a workspace (it holds {WORKSPACE_MARKER}); choose another path")
    check_apart_from_sources(out, sources, option=option)
    return real


def check_apart_from_sources(
    out: str | os.PathLike, sources: Iterable[str | os.PathLike | None], *, option: str = "--out"
) -> None:
    """Refuse an output that is, contains or lies inside one of the command's own inputs."""
    real = _real(out)
    for source in sources:
        if source is None:
            continue
        src = _real(source)
        how = _overlap(real, src)
        if how:
            raise UserError(f"{option} {out}: {how} {src}, which this command reads; they must not overlap")


def check_replaceable(
    path: str | os.PathLike,
    *,
    kind: str,
    overwrite: bool,
    is_previous: Callable[[Path], bool],
    marker: str,
) -> None:
    """Refuse to write over ``path`` unless it is absent, or ``overwrite`` and it is a previous ``kind``.

    ``is_previous(path)`` recognises a previous output of this kind by its marker (named ``marker`` in the
    message). An empty directory counts as absent. Leftovers of killed runs are settled first.
    """
    path = Path(path)
    clean_stale_temps(path.parent, path.name)  # a killed run's moved-aside output counts as present
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{path}: already exists (pass --overwrite to replace it)")
    if path.is_symlink() or not is_previous(path):
        raise UserError(
            f"{path}: exists and is not a previous {kind} (no {marker}); --overwrite only replaces a {kind} "
            "this tool wrote: move it away or choose another path"
        )


def has_file(name: str) -> Callable[[Path], bool]:
    """Marker test: ``path`` is a directory holding the file ``name``."""
    return lambda path: path.is_dir() and (path / name).is_file()


# --- export markers ---------------------------------------------------------------------------------


def export_marker_path(out: Path) -> Path:
    """Where an export's marker lives: inside an exported folder, beside an exported file."""
    out = Path(out)
    return out / EXPORT_MARKER if out.is_dir() else out.with_name(f".{out.name}{EXPORT_MARKER}")


def is_previous_export(fmt: str) -> Callable[[Path], bool]:
    def check(out: Path) -> bool:
        marker = export_marker_path(out)
        try:
            return load_json_file(marker).get("format") == fmt
        except (UserError, AttributeError):
            return False

    return check


# --- leftovers of killed runs -----------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (a reused pid errs on the side of keeping)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` entries of dead pids in ``directory``.

    ``name`` limits the sweep to one output's temporaries (None: every output in ``directory``). A
    ``.old-<pid>`` whose output is missing is the previous output a killed writer had moved aside: it is
    renamed back instead of removed. Returns the paths removed or restored.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    handled = []
    for entry in sorted(directory.iterdir()):
        match = TEMP_PATTERN.match(entry.name)
        if not match or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        final = directory / match["name"]
        try:
            if match["kind"] == "old" and not (final.exists() or final.is_symlink()):
                os.replace(entry, final)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # another process (a torchrun rank) settled it first
        handled.append(entry)
    return handled


# --- runs an ablation may clear -----------------------------------------------------------------------


def check_ablation_owned(run_dir: Path, cell_marker: str) -> None:
    """Refuse to remove ``run_dir`` unless an ablation made it: it holds ``cell_marker``, or its recorded
    command is a `train ablate` (or a library call, which records none). A run from `train run` is never
    removed by an ablation that happens to use the same name."""
    run_dir = Path(run_dir)
    if (run_dir / cell_marker).is_file():
        return
    try:
        record = load_json_file(run_dir / "config.json")
        command = record.get("command") or "" if isinstance(record, dict) else None
    except UserError:
        command = None
    if command is not None and (command == "" or command.split()[:2] == ["train", "ablate"]):
        return
    raise UserError(
        f"{run_dir}: the ablation would replace this run, but it did not make it (no {cell_marker}); "
        "move it away or rename the grid's strategies"
    )
