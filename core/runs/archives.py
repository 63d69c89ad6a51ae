"""Run folders as zips: trained headless on one machine, looked at in another installation's dashboard.

`import_run_zip` trusts nothing in the zip (checked as docs/runs.md says): it is vetted by core.safety.zips,
assembled in a hidden `.incomplete-...` folder the run list never opens, and renamed into place only once its
JSON matches core.runs.schema and its model.h5 passed inspect_model_file. No TensorFlow until that inspection.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from core.models.hub import RELATIVE_PREFIX, is_cached, is_local
from core.runs.evaluate import EVALUATION_FILE, load_evaluation
from core.runs.folders import REQUIRED_FILES, RunWriter, new_run_id, open_run
from core.runs.schema import RunSchemaError, load_layers, load_run_json
from core.safety.model_files import inspect_model_file, rewrite_hub_handles
from core.safety.savedmodel_ops import check_savedmodel
from core.safety.zips import ZipRules, archiver_metadata, extract_members, open_zip, vetted_files
from core.settings.errors import LabError
from core.settings.text import megabytes

logger = logging.getLogger(__name__)

MAX_RUN_FILES = 1000  # a run holds about ten files plus a few dozen evaluation thumbnails
# Uncompressed: the model file's own limit (core.safety.model_files.MAX_MODEL_BYTES) plus room for the rest.
MAX_RUN_BYTES = 600 * 10**6
# Files a run folder is made of; anything else in a zip (exports, caches, notes) is left out and counted.
RUN_SUFFIXES = (".json", ".txt", ".h5", ".png")
EXPORTS_DIR = "exports"  # exports are rebuilt from model.h5 on demand and can be far larger than it
# A run zip carries the SavedModel its KerasLayer loads here, inside the run folder, named "./backbone" in
# the zipped model.h5: a run trained on a local SavedModel then works on any Lab, a hosted one included.
BACKBONE_DIR = "backbone"
# How a run zip is vetted (by core.safety.zips, as dataset zips are) and how its refusals read.
RUN_ZIP = ZipRules(
    MAX_RUN_FILES, MAX_RUN_BYTES, LabError, action="import", outcome="nothing was imported",
    not_a_zip="The file is not a zip. Zip a run folder (runs/<run-id>/) and import that.",
    encrypted="The zip is password-protected; zip the run folder without a password.",
    too_many="The zip holds {files:,} files; a run folder has far fewer (the limit is {limit:,}).",
    too_big="The zip would unpack to more than {limit_mb}, more than a run folder holds.")
# Run ids the Lab writes (20261128-055615-baseline-759c) and anything tame enough to be a folder name.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class ImportedRun:
    path: Path  # the run folder now in the runs folder
    warnings: list[str] = field(default_factory=list)  # what may not work here, in words for the user
    skipped: int = 0  # files in the zip that are not part of a run folder


def _run_root(paths: list[PurePosixPath]) -> PurePosixPath:
    """The folder inside the zip that holds config.json beside model.h5, at any depth: `zip -r x.zip
    runs/<id>` from the project folder nests it one level deeper than zipping from inside runs/."""
    present = set(paths)
    roots = {p.parent for p in paths if p.name == "config.json" and p.parent / "model.h5" in present}
    if not roots:
        raise LabError("The zip holds no run folder: zip a folder from runs/ (it has config.json, history.json, "
                       "metrics.json and model.h5), or export one from the dashboard.")
    if len(roots) > 1:
        raise LabError(f"The zip holds {len(roots)} run folders; import them one zip at a time.")
    return roots.pop()


def _wanted(relative: PurePosixPath) -> bool:
    """Whether a file at this path inside the run folder belongs to a run."""
    if archiver_metadata(relative) or relative.parts[0] == EXPORTS_DIR:
        return False
    if relative.parts[0].partition("-")[0] == BACKBONE_DIR and len(relative.parts) > 1:
        return True  # a SavedModel's files: saved_model.pb, variables/variables.data-00000-of-00001, ...
    return relative.suffix.lower() in RUN_SUFFIXES


def _check_evaluation(folder: Path) -> str | None:
    """Drop an evaluation.json that is damaged or names a thumbnail it does not hold inside the run folder
    (the pages open every one it names); returns a warning if dropped."""
    try:
        evaluation = load_evaluation(folder)  # refuses thumbnails outside the folder
        if evaluation is None or all(w.thumbnail.is_file() for w in evaluation.wrong):
            return None
    except (LabError, OSError):
        pass
    (folder / EVALUATION_FILE).unlink()
    shutil.rmtree(folder / "evaluation", ignore_errors=True)
    return ("The run's evaluation (confusion matrix and wrong predictions) was damaged or pointed outside the "
            "run folder and was left out.")


def _handle_warnings(handles: list[str], folder: Path) -> list[str]:
    """What may not work here, for each hub handle; a backbone carried inside the run is checked instead."""
    out = []
    for handle in handles:
        if is_local(handle) and Path(handle).is_relative_to(folder.resolve()):
            if not (Path(handle) / "saved_model.pb").is_file():
                raise LabError("The run's model names a backbone inside the run folder that the zip does not "
                               "hold; refusing to import it.")
            check_savedmodel(handle)
        elif is_local(handle):
            if not (Path(handle) / "saved_model.pb").is_file():
                out.append(f"The model's hub module is the folder '{handle}' on the machine that trained it, "
                           "which is not here: Predict needs that SavedModel at the same path (copy it there).")
        elif not is_cached(handle):
            out.append(f"The model's hub module '{handle}' is not in this installation's cache yet: Predict "
                       "downloads it on first use, which needs the network.")
    return out


def _final_name(root: PurePosixPath, config: dict) -> str:
    """The zipped folder's own name when it is a tame one, else a fresh run id."""
    name = root.name if root.parts else ""
    if SAFE_NAME.match(name):
        return name
    model = str(config.get("train", {}).get("model", ""))
    return new_run_id(model if SAFE_NAME.match(model) else "run")


def _publish(tmp: Path, runs_dir: Path, name: str) -> Path:
    """Rename into place; a name already taken (or taken meanwhile) gets a fresh suffix."""
    candidate = name
    for _ in range(20):
        final = runs_dir / candidate
        if not final.exists():
            try:
                os.rename(tmp, final)
                return final
            except OSError:  # another import or run took the name between the check and the rename
                pass
        candidate = f"{name}-imported-{secrets.token_hex(2)}"
    raise LabError(f"Could not find a free folder name for '{name}' in {runs_dir}.")


def import_run_zip(data: bytes | io.BufferedIOBase, runs_dir: str | Path,
                   allowed_handle: Callable[[str], bool] | None = None, max_files: int = MAX_RUN_FILES,
                   max_bytes: int = MAX_RUN_BYTES) -> ImportedRun:
    """Unpack a zipped run folder into runs_dir and return where it landed (and what may not work here).

    allowed_handle is passed to inspect_model_file: the dashboard refuses hub modules in arbitrary server
    folders, the command line (the machine's own user) does not. Raises LabError for anything unsafe or
    incomplete; nothing is left behind then.
    """
    runs_dir = Path(runs_dir)
    rules = dataclasses.replace(RUN_ZIP, max_files=max_files, max_bytes=max_bytes)
    with open_zip(data, rules) as archive:
        files = vetted_files(archive, rules)
        root = _run_root([path for _, path in files])
        inside = [(member, PurePosixPath(*path.parts[len(root.parts):])) for member, path in files
                  if path.parts[:len(root.parts)] == root.parts and len(path.parts) > len(root.parts)]
        members = [(member, relative) for member, relative in inside if _wanted(relative)]
        skipped = len(files) - len(members)
        missing = [f for f in REQUIRED_FILES if f not in {str(rel) for _, rel in members}]
        if missing:
            raise LabError(f"The zipped run is incomplete (missing {', '.join(missing)}); only finished runs "
                           "can be imported.")
        writer = RunWriter(runs_dir, f"import-{secrets.token_hex(4)}")  # hidden, and kept from clean-ups
        tmp = writer.tmp
        try:
            extract_members(archive, members, tmp, rules)
            try:
                config, _, _ = load_run_json(tmp)
            except RunSchemaError as exc:
                raise LabError(f"The run's {exc} Refusing to import it.") from None
            info = inspect_model_file(tmp / "model.h5", allowed_handle=allowed_handle)
            names = config["class_names"]
            if info.num_outputs is not None and info.num_outputs != len(names):
                raise LabError(f"The run's model has {info.num_outputs} outputs but its config lists "
                               f"{len(names)} classes; refusing to import a mismatched run.")
            warnings = _handle_warnings(info.hub_handles, tmp)
            dropped = _check_evaluation(tmp)
            if dropped:
                warnings.append(dropped)
            if (tmp / "layers.json").is_file() and load_layers(tmp) is None:
                (tmp / "layers.json").unlink()
                warnings.append("The run's layer table (layers.json) was damaged and was left out; its text "
                                "summary is shown instead.")
            (tmp / "owner.pid").unlink()
            final = _publish(tmp, runs_dir, _final_name(root, config))
        except BaseException:
            writer.abandon()
            raise
    if skipped:
        warnings.append(f"{skipped} file(s) that are not part of a run folder (exports, other files) were left out.")
    logger.info("Imported run %s into %s", final.name, runs_dir)
    return ImportedRun(final, warnings, skipped)


def import_run_file(path: str | Path, runs_dir: str | Path, allowed_handle=None) -> ImportedRun:
    """import_run_zip for a zip on disk, refusing oversized files before reading them."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
    except OSError:
        raise LabError(f"'{path}' does not exist; give the path of a zipped run folder.") from None
    if not path.is_file():
        raise LabError(f"'{path}' is not a file; give the path of a zipped run folder (zip runs/<run-id>/ first).")
    if size > MAX_RUN_BYTES:
        raise LabError(f"'{path.name}' is {megabytes(size)}, more than a run folder holds "
                       f"({megabytes(MAX_RUN_BYTES)}).")
    with open(path, "rb") as fh:
        return import_run_zip(fh, runs_dir, allowed_handle=allowed_handle)


def _outside_backbones(model_path: Path, root: Path) -> dict[str, str]:
    """SavedModel folders outside the run folder that its model loads: folder -> the "./" handle it gets."""
    local = [h for h in inspect_model_file(model_path).hub_handles
             if is_local(h) and not Path(h).resolve().is_relative_to(root.resolve())]
    missing = [h for h in local if not (Path(h) / "saved_model.pb").is_file()]
    if missing:
        raise LabError(f"The run's model loads the SavedModel folder '{missing[0]}', which is not on this machine "
                       "any more, so the zip could not carry it; put it back at that path and download again.")
    names = [BACKBONE_DIR] + [f"{BACKBONE_DIR}-{k}" for k in range(2, len(local) + 1)]
    return {handle: RELATIVE_PREFIX + name for handle, name in zip(sorted(set(local)), names)}


def export_run_zip(run_dir: str | Path) -> bytes:
    """A zip of a finished run folder (its name as the top folder), without exports or hidden files.

    A backbone SavedModel loaded from a local folder outside the run goes into the zip under backbone/,
    and the zipped model.h5 names it "./backbone", so the run imports, predicts and evaluates on any Lab.
    """
    record = open_run(run_dir)
    root = record.path
    backbones = _outside_backbones(record.model_path, root)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
            tempfile.TemporaryDirectory() as tmp:
        for path in sorted(root.rglob("*")):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if path.is_symlink() or not path.is_file() or not _wanted(relative):
                continue
            if relative == PurePosixPath("model.h5") and backbones:
                portable = Path(tmp) / "model.h5"
                rewrite_hub_handles(path, portable, backbones)
                path = portable
            archive.write(path, f"{root.name}/{relative}")
        for folder, handle in backbones.items():
            name = handle.removeprefix("./")
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file() and not path.is_symlink():
                    archive.write(path, f"{root.name}/{name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


__all__ = ["MAX_RUN_BYTES", "MAX_RUN_FILES", "ImportedRun", "export_run_zip", "import_run_file", "import_run_zip"]
