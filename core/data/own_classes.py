"""A participant's own classes: images taken with a phone's camera or uploaded, kept per session on the server.

One session's classes live in one folder, named after a hash of the session's token (never the token):

    <uploads folder>/own/<hash>/
        classes/<class name>/<image id>.jpg   the images, re-encoded as JPEG of at most IMAGE_SIDE pixels
        thumbs/<image id>.jpg                 a small copy of each, for the page's grid
        sets/<digest>/own-classes/<class>/... frozen copies (hard links) that a training reads: adding or
                                              removing images later never changes a dataset in use
        .touched                              its time says when the folder was last used (prune_idle)

The class folders are named after the classes themselves, because core.data.sources.FolderSource takes its
class names from folder names: the names a participant types are checked (clean_class_name) so that each is
a safe folder name on this server and on whatever machine unpacks the downloaded zip. Every image goes
through core.data.images.decode_image, the checks every other upload gets, before anything is stored.
Changes to one folder happen under a lock, so two tabs of one session adding at once keep within the limits.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import secrets
import shutil
import threading
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.data.images import decode_image
from core.data.sources import validation_images
from core.settings.errors import DataError
from core.settings.files import locked, write_atomically
from core.settings.source import Source
from core.settings.text import megabytes

logger = logging.getLogger(__name__)

MIN_CLASSES, MAX_CLASSES = 2, 6  # a comparison needs two; a phone screen and a workshop's minutes, six
MAX_IMAGES_PER_CLASS = 30  # enough for the transfer head to separate classes, little enough to take by hand
MAX_SESSION_BYTES = 20 * 10**6  # one session's images and thumbnails on disk (about 300 photos at 512 px)
MAX_NAME_CHARS = 40
IMAGE_SIDE = 512  # longest side kept: more than any model input here (224), and a bounded file
THUMB_SIDE = 160
JPEG_QUALITY = 85
MIN_IMAGES_TO_TRAIN = 2  # per class: one to train on, one held out for validation
SUGGESTED_IMAGES = 10  # per class: with FolderSource's 20% held out, 8 to train on and 2 to check
IDLE_SECONDS = 24 * 3600  # a session folder unused this long is removed (prune_idle)
PRUNE_EVERY_SECONDS = 600  # prune_if_due looks at the folders at most this often per process
KEPT_SETS = 5  # frozen copies kept per session; older ones go once they are an hour old
SET_GRACE_SECONDS = 3600  # a training queued on a frozen copy has long finished by then
# Training on own classes: the transfer head on cached features. A head on a few dozen images takes only a
# couple of steps an epoch, so it needs a larger rate than the article's to leave chance within seconds;
# 10 epochs leave a margin (benchmarks/README.md has the figures).
OWN_EPOCHS = 10
OWN_LEARNING_RATE = 0.01
OWN_BATCH_SIZE = 16  # the cloud preset's cap; a class of 30 images is two batches

CLASSES_DIR, THUMBS_DIR, SETS_DIR = "classes", "thumbs", "sets"
SET_NAME = "own-classes"  # a frozen set's folder: the dataset's name wherever the Lab names one
TOUCHED, LOCK = ".touched", ".lock"
# Characters no folder name may hold here or on Windows, where a downloaded zip may be unpacked.
_FORBIDDEN = set('/\\<>:"|?*')
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_SPLIT_NAMES = ("val", "validation")  # with a class called "train", FolderSource would read these as splits


def own_root() -> Path:
    from core.settings.paths import uploads_dir

    return uploads_dir() / "own"


def session_folder_name(token: str) -> str:
    """The folder of a session's classes: a hash of its token, so the token never appears on disk."""
    return hashlib.sha256(b"lab-own-classes\0" + str(token).encode()).hexdigest()[:32]


def store_for(token: str, root: Path | None = None) -> ClassStore:
    return ClassStore((root or own_root()) / session_folder_name(token))


def owner_folder(source: str, root: Path | None = None) -> str | None:
    """The session folder name a "folder:" source of own classes belongs to, or None for any other source."""
    parsed = Source.parse(source)
    if not parsed.is_folder or not parsed.value:
        return None
    base = Path(os.path.abspath(root or own_root()))
    try:
        inside = Path(os.path.abspath(parsed.value)).relative_to(base)
    except ValueError:
        return None
    return inside.parts[0] if inside.parts else None


def belongs_to_other_session(source: str, token: str, root: Path | None = None) -> bool:
    """Whether source is another session's own classes: their pictures are theirs to see, not this one's."""
    owner = owner_folder(source, root)
    return owner is not None and owner != session_folder_name(token)


def clean_class_name(name: str, existing: list[str] = (), replacing: str | None = None) -> str:
    """The name as it will be stored and shown, or a DataError saying what to change.

    Names become folder names (FolderSource's class names): no separators, no characters Windows refuses,
    nothing hidden or reserved, no duplicates that differ only in case (one folder on macOS and Windows).
    """
    text = " ".join(unicodedata.normalize("NFC", str(name or "")).split())
    if not text:
        raise DataError("Type a name for the class.")
    if len(text) > MAX_NAME_CHARS:
        raise DataError(f"A class name may have at most {MAX_NAME_CHARS} characters ({len(text)} typed).")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise DataError("A class name cannot hold control or invisible characters.")
    if _FORBIDDEN & set(text):
        raise DataError('A class name cannot hold / \\ < > : " | ? * (it names a folder in the zip).')
    if text.startswith(".") or text.endswith("."):
        raise DataError("A class name cannot start or end with a dot (such folders are hidden or renamed).")
    if text.split(".")[0].strip().lower() in _WINDOWS_RESERVED:
        raise DataError(f"'{text}' is a reserved file name on Windows; choose another class name.")
    others = [n for n in existing if replacing is None or n != replacing]
    if any(n.casefold() == text.casefold() for n in others):
        raise DataError(f"There is already a class called '{text}'.")
    names = {n.casefold() for n in others} | {text.casefold()}
    if "train" in names and names & set(_SPLIT_NAMES):
        raise DataError("Classes called 'train' and 'val' (or 'validation') together would read as a dataset's "
                        "splits; rename one of them.")
    return text


@dataclass(frozen=True)
class OwnImage:
    image_id: str
    path: Path
    thumbnail: Path


@dataclass(frozen=True)
class OwnClass:
    name: str
    images: tuple[OwnImage, ...]

    @property
    def count(self) -> int:
        return len(self.images)


def _jpeg(image, side: int) -> bytes:
    from PIL import Image

    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    copy.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def encode_image(data: bytes, name: str = "image") -> tuple[bytes, bytes]:
    """(image, thumbnail) as JPEG bytes, longest sides IMAGE_SIDE and THUMB_SIDE; ImageError for a file that
    decode_image refuses (not an image, a bomb, corrupt data)."""
    from PIL import Image

    pixels = decode_image(data, name, min_side=IMAGE_SIDE)
    image = Image.fromarray(pixels)
    return _jpeg(image, IMAGE_SIDE), _jpeg(image, THUMB_SIDE)


class ClassStore:
    """One session's classes and images in `folder` (see the module docstring for its layout)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.classes_dir = self.folder / CLASSES_DIR
        self.thumbs_dir = self.folder / THUMBS_DIR

    @contextlib.contextmanager
    def _changing(self):
        self.classes_dir.mkdir(parents=True, exist_ok=True)
        self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.folder / LOCK):
            yield
        self.touch(force=True)

    def touch(self, force: bool = False) -> None:
        """Mark the folder as in use (prune_idle keeps it); a visit writes at most once a minute."""
        marker = self.folder / TOUCHED
        with contextlib.suppress(OSError):
            if force or time.time() - marker.stat().st_mtime > 60:
                marker.touch()
            return
        with contextlib.suppress(OSError):
            if self.folder.is_dir():
                marker.touch()

    def class_names(self) -> list[str]:
        """In FolderSource's order (sorted), which is the order of a trained model's outputs."""
        try:
            return sorted(p.name for p in self.classes_dir.iterdir() if p.is_dir() and not p.is_symlink()
                          and not p.name.startswith("."))
        except OSError:
            return []

    def _images(self, name: str) -> tuple[OwnImage, ...]:
        folder = self.classes_dir / name
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg" and not p.name.startswith(".")
                           and p.is_file() and not p.is_symlink())
        except OSError:
            return ()
        return tuple(OwnImage(p.stem, p, self.thumbs_dir / p.name) for p in files)

    def classes(self) -> list[OwnClass]:
        return [OwnClass(name, self._images(name)) for name in self.class_names()]

    def total_bytes(self) -> int:
        total = 0
        for folder in (self.classes_dir, self.thumbs_dir):
            if folder.is_dir():
                for path in folder.rglob("*"):
                    with contextlib.suppress(OSError):
                        if path.is_file() and not path.is_symlink():
                            total += path.stat().st_size
        return total

    def _existing(self, name: str) -> str:
        if name not in self.class_names():
            raise DataError(f"There is no class called '{name}' (any more): it was renamed or removed.")
        return name

    def add_class(self, name: str) -> str:
        with self._changing():
            names = self.class_names()
            if len(names) >= MAX_CLASSES:
                raise DataError(f"At most {MAX_CLASSES} classes; remove one to add another.")
            name = clean_class_name(name, names)
            (self.classes_dir / name).mkdir()
        return name

    def rename_class(self, old: str, new: str) -> str:
        with self._changing():
            names = self.class_names()
            self._existing(old)
            new = clean_class_name(new, names, replacing=old)
            if new != old:
                os.rename(self.classes_dir / old, self.classes_dir / new)
        return new

    def remove_class(self, name: str) -> None:
        with self._changing():
            self._existing(name)
            for image in self._images(name):
                with contextlib.suppress(OSError):
                    image.thumbnail.unlink()
            shutil.rmtree(self.classes_dir / name, ignore_errors=True)

    def add_image(self, class_name: str, data: bytes, name: str = "image") -> OwnImage:
        """Check, shrink and store one image in the class; DataError or ImageError (one line) if it cannot be."""
        image, thumb = encode_image(data, name)  # the slow part, outside the lock
        with self._changing():
            self._existing(class_name)
            if len(self._images(class_name)) >= MAX_IMAGES_PER_CLASS:
                raise DataError(f"'{class_name}' has {MAX_IMAGES_PER_CLASS} images, the most a class may have; "
                                f"{name} was not added. Remove some to add others.")
            used = self.total_bytes()
            if used + len(image) + len(thumb) > MAX_SESSION_BYTES:
                raise DataError(f"Your classes hold {megabytes(used)} of images, and {name} would pass the "
                                f"{megabytes(MAX_SESSION_BYTES)} limit; remove some images first.")
            # Time first, so that names sort in the order images were added; random, so two tabs never clash.
            image_id = f"{time.time_ns():x}-{secrets.token_hex(4)}"
            stored = OwnImage(image_id, self.classes_dir / class_name / f"{image_id}.jpg",
                              self.thumbs_dir / f"{image_id}.jpg")
            write_atomically(stored.thumbnail, thumb)
            write_atomically(stored.path, image)
        return stored

    def remove_image(self, class_name: str, image_id: str) -> None:
        with self._changing():
            for image in self._images(class_name):
                if image.image_id == image_id:
                    for path in (image.path, image.thumbnail):
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()

    def problems(self) -> list[str]:
        """What stops these classes from training, as sentences; empty when they can."""
        classes = self.classes()
        out = []
        if len(classes) < MIN_CLASSES:
            out.append(f"Name at least {MIN_CLASSES} classes.")
        few = [c.name for c in classes if c.count < MIN_IMAGES_TO_TRAIN]
        if few:
            out.append(f"Every class needs at least {MIN_IMAGES_TO_TRAIN} images (one to learn from, one to check "
                       f"with); add some to: {', '.join(few)}.")
        return out

    def zip_bytes(self) -> bytes:
        """A zip of one folder per class, the format the Dataset page imports. Stored, not compressed (JPEGs
        do not shrink), and bounded by MAX_SESSION_BYTES like the images themselves."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for own in self.classes():
                for image in own.images:
                    with contextlib.suppress(OSError):  # removed by another tab meanwhile
                        archive.writestr(f"{own.name}/{image.path.name}", image.path.read_bytes())
                        if buffer.tell() > MAX_SESSION_BYTES * 2:
                            raise DataError("These classes are over the size limit; remove some images first.")
        return buffer.getvalue()

    def frozen_set(self) -> Path:
        """A folder with the classes as they are now, for training: hard links to the images (copies where
        links are not possible), never changed afterwards, so a run's dataset stays what it trained on."""
        problems = self.problems()
        if problems:
            raise DataError(" ".join(problems))
        with self._changing():
            listing = [(c.name, i.path.name) for c in self.classes() for i in c.images]
            digest = hashlib.sha256(repr(listing).encode()).hexdigest()[:16]
            sets = self.folder / SETS_DIR
            target = sets / digest
            if not target.is_dir():
                partial = sets / f".partial-{digest}-{secrets.token_hex(4)}"
                try:
                    for class_name, file_name in listing:
                        (partial / SET_NAME / class_name).mkdir(parents=True, exist_ok=True)
                        source = self.classes_dir / class_name / file_name
                        copy = partial / SET_NAME / class_name / file_name
                        try:
                            os.link(source, copy)
                        except OSError:
                            shutil.copyfile(source, copy)
                    partial.mkdir(parents=True, exist_ok=True)
                    os.rename(partial, target)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
            os.utime(target)
            self._prune_sets(keep=target)
        return target / SET_NAME

    def _prune_sets(self, keep: Path) -> None:
        sets = [p for p in (self.folder / SETS_DIR).iterdir() if p.is_dir() and not p.name.startswith(".")]
        sets.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in sets[KEPT_SETS:]:
            if old != keep and time.time() - old.stat().st_mtime > SET_GRACE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)


def training_images(counts: list[int]) -> int:
    """Images FolderSource trains on, of classes holding these counts (the rest are held out)."""
    return sum(n - validation_images(n) for n in counts)


def training_configs(source: str, handle: str, train_images: int, with_baseline: bool = False) -> list:
    """[(DataConfig, TrainConfig)] for own classes under the active preset: the transfer model first, then the
    CNN from scratch if asked; LabError (core.settings.presets.apply_preset) for what the preset refuses.

    A batch is never larger than the training images (training refuses that): 5 images a class train on 8."""
    from core.settings.config import ARTICLE_EPOCHS, ARTICLE_IMAGE_SIZE, DataConfig, ModelKind, TrainConfig
    from core.settings.presets import active_preset, apply_preset, capped_batch_size

    preset = active_preset()
    size = min(ARTICLE_IMAGE_SIZE, preset.max_image_size or ARTICLE_IMAGE_SIZE)
    data = DataConfig(source=source, image_size=size, batch_size=max(1, min(train_images, capped_batch_size(OWN_BATCH_SIZE, preset))))
    trains = [TrainConfig(model=ModelKind.TRANSFER, epochs=OWN_EPOCHS, learning_rate=OWN_LEARNING_RATE,
                          handle=handle, cache_features=True)]
    if with_baseline:
        # The article's baseline epochs, for the optional comparison with a CNN trained from scratch.
        trains.append(TrainConfig(model=ModelKind.BASELINE, epochs=ARTICLE_EPOCHS[ModelKind.BASELINE], handle=handle))
    return [(apply_preset(data, train, preset), train) for train in trains]


def prune_idle(root: str | Path, now: float, idle_seconds: float = IDLE_SECONDS) -> list[Path]:
    """Remove the session folders under root not used for idle_seconds; the removed folders."""
    removed = []
    try:
        folders = [p for p in Path(root).iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    for folder in folders:
        try:
            used = (folder / TOUCHED).stat().st_mtime
        except OSError:
            try:
                used = folder.stat().st_mtime  # a folder made but never marked: its own time
            except OSError:
                continue
        if now - used > idle_seconds:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed own classes unused for %.0f hours: %s", (now - used) / 3600, folder.name)
            removed.append(folder)
    return removed


_last_pruned = 0.0
_prune_lock = threading.Lock()


def prune_if_due(root: str | Path | None = None, now: float | None = None) -> list[Path]:
    """prune_idle, at most once every PRUNE_EVERY_SECONDS in this process: cheap enough to call on every page run."""
    global _last_pruned
    now = time.time() if now is None else now
    with _prune_lock:
        if now - _last_pruned < PRUNE_EVERY_SECONDS:
            return []
        _last_pruned = now
    return prune_idle(root or own_root(), now)
