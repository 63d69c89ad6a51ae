"""What opening an .h5 model will read and allocate, known from the file's layout before any of it is read.

HDF5 lets a file keep data in other files (external storage, virtual datasets, external links), declare
gigabytes it does not store, or point many attribute elements at one string; tf_keras follows all of it and
Keras never writes any of it. So the file is walked through links and headers only: every object a group or a
dataset of numbers kept in this file, and the weights tf_keras will read (found as it finds them) declaring
no more beyond what is stored than the model's config needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from core.safety.hdf5_headers import HeaderError, HeaderReader
from core.settings.errors import ModelFileError
from core.settings.text import megabytes

# HDF5's own filters (deflate, shuffle, fletcher32, szip, nbit, scaleoffset); anything else is a plugin.
STANDARD_FILTERS = frozenset({1, 2, 3, 4, 5, 6})
MAX_OBJECTS = 100_000  # links walked; MobileNetV2 saved with its optimizer has about 1,000
MAX_NAME_CHUNKS = 10_000  # tf_keras splits a long name list over attributes weight_names0, weight_names1, ...
MAX_NAME = 4096  # one layer or weight name
MAX_SHOWN = 120  # characters of a name inside the file shown in a message
# Bytes a weight may declare beyond what the file stores (a compressed or never written dataset), per
# parameter the config declares: the weight and Adam's two moments in float32, and a little for counters.
BYTES_PER_PARAM = 3 * 4
UNSTORED_SLACK = 2**20
NOT_OPENED = "a Keras .h5 never does, so it was not opened"


@dataclass(frozen=True)
class StoredDataset:
    path: str  # where the walk first met it in the file
    shape: tuple[int, ...]
    declared: int  # bytes reading it allocates: its shape times its element size
    stored: int  # bytes the file holds for it


@dataclass(frozen=True)
class WeightRead:
    name: str  # as the layer's weight_names (or the optimizer's) list it
    dataset: StoredDataset


def _shown(name: str) -> str:
    return name if len(name) <= MAX_SHOWN else name[:MAX_SHOWN] + "..."


def _refuse(label: str, what: str) -> ModelFileError:
    return ModelFileError(f"'{label}' {what}.")


def _address(object_id) -> int:
    import h5py

    return h5py.h5o.get_info(object_id).addr


def _dataset(dsid, path: str, label: str) -> StoredDataset:
    import h5py

    plist = dsid.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise _refuse(label, f"makes '{_shown(path)}' a virtual dataset, whose values come from other files; "
                             f"{NOT_OPENED}")
    if plist.get_external_count():
        raise _refuse(label, f"keeps the weight '{_shown(path)}' in another file (HDF5 external storage); {NOT_OPENED}")
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise _refuse(label, f"stores '{_shown(path)}' in a layout HDF5 does not describe; {NOT_OPENED}")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in STANDARD_FILTERS:
            raise _refuse(label, f"stores '{_shown(path)}' through a filter that is not one of HDF5's own "
                                 f"(number {code}); {NOT_OPENED}")
    dtype = dsid.dtype
    if dtype.kind not in "iufb" or dtype.itemsize > 8 or dtype.fields or dtype.subdtype:
        raise _refuse(label, f"stores '{_shown(path)}' as something other than numbers; {NOT_OPENED}")
    shape = tuple(int(d) for d in (dsid.shape or ()))
    declared = dtype.itemsize
    for d in shape:
        declared *= d
    stored = dsid.get_storage_size()
    if layout != h5py.h5d.CHUNKED and stored > declared:
        raise _refuse(label, f"is damaged: '{_shown(path)}' stores more bytes than its shape holds")
    return StoredDataset(path, shape, declared, stored)


def walk(f, label: str, file_size: int) -> dict[int, StoredDataset]:
    """Every object of the file, reached through its links without reading any data: the datasets by address.

    Refuses anything but hard links to groups and to datasets of numbers kept in this file, and datasets that
    together claim more stored bytes than the file has (two weights read from the same bytes).
    """
    import h5py

    datasets: dict[int, StoredDataset] = {}
    seen = {_address(f.id)}
    stack = [("", f.id)]
    links = 0
    while stack:
        prefix, gid = stack.pop()
        for raw in gid:
            links += 1
            if links > MAX_OBJECTS:
                raise _refuse(label, f"holds more than {MAX_OBJECTS:,} objects; refusing to read it")
            path = prefix + raw.decode("utf-8", "replace")
            kind = gid.links.get_info(raw).type
            if kind == h5py.h5l.TYPE_EXTERNAL:
                raise _refuse(label, f"links '{_shown(path)}' to another file (an HDF5 external link); {NOT_OPENED}")
            if kind == h5py.h5l.TYPE_SOFT:
                raise _refuse(label, f"makes '{_shown(path)}' a soft link; {NOT_OPENED}")
            if kind != h5py.h5l.TYPE_HARD:
                raise _refuse(label, f"makes '{_shown(path)}' a user-defined link; {NOT_OPENED}")
            oid = h5py.h5o.open(gid, raw)
            address = _address(oid)
            kind = h5py.h5i.get_type(oid)
            if kind == h5py.h5i.GROUP:
                if address not in seen:
                    seen.add(address)
                    stack.append((path + "/", oid))
            elif kind == h5py.h5i.DATASET:
                if address not in datasets:
                    datasets[address] = _dataset(oid, path, label)
            else:
                raise _refuse(label, f"holds '{_shown(path)}', which is neither a group nor a dataset; {NOT_OPENED}")
    if sum(d.stored for d in datasets.values()) > file_size:
        raise _refuse(label, f"claims to store more weight data than its {megabytes(file_size)}; {NOT_OPENED}")
    return datasets


class AttributeReader:
    """Reads the attributes tf_keras reads, each only after the bytes reading it allocates are known.

    Variable-length text is measured in the object header (core.safety.hdf5_headers): every element must be
    a stored string of its own, and all of them together no longer than the file.
    """

    def __init__(self, f, fh: BinaryIO, label: str, file_size: int):
        sizes = f.id.get_create_plist().get_sizes()
        try:
            self.headers = HeaderReader(fh, f.userblock_size, sizes[0], sizes[1], file_size)
        except HeaderError as exc:
            raise _refuse(label, f"has an HDF5 layout the Lab does not read ({exc}); it was not opened") from None
        self.label, self.file_size = label, file_size
        self.heap_objects: set[bytes] = set()
        self.text_bytes = 0

    def check(self, obj, name: str, what: str, limit: int) -> bool:
        """Whether obj has the attribute name, refusing it unless reading it takes at most limit bytes."""
        import h5py

        if name not in obj.attrs:
            return False
        attr = obj.attrs.get_id(name)
        count = 1
        for d in attr.shape or ():
            count *= int(d)
        dtype = attr.dtype
        string = h5py.check_string_dtype(dtype)
        if string is None and dtype.kind == "O":
            raise _refuse(self.label, f"stores its {what} as variable-length data that is not text; {NOT_OPENED}")
        if string is not None and string.length is None:
            try:
                elements = self.headers.vlen_elements(_address(obj.id), name.encode(), count)
            except HeaderError as exc:
                raise _refuse(self.label, f"has an HDF5 layout the Lab does not read ({exc}); it was not "
                                          "opened") from None
            size = sum(e.length for e in elements)
            for element in elements:
                if element.length and element.heap_object in self.heap_objects:
                    raise _refuse(self.label, f"stores its {what} as references to text stored once, which "
                                              f"reading would copy many times; {NOT_OPENED}")
                self.heap_objects.add(element.heap_object)
        else:
            size = count * dtype.itemsize
        if size > limit:
            raise _refuse(self.label, f"has a {what} over {megabytes(limit)}; refusing to load it")
        self.text_bytes += size
        if self.text_bytes > self.file_size:
            raise _refuse(self.label, f"has more attribute text than the file's {megabytes(self.file_size)}; "
                                      f"{NOT_OPENED}")
        return True

    def read(self, obj, name: str, what: str, limit: int):
        """The attribute's value, or None when obj has none."""
        return obj.attrs[name] if self.check(obj, name, what, limit) else None

    def names(self, obj, name: str, what: str) -> list[str]:
        """A list of names the way tf_keras reads it: from the attribute name, or name0, name1, ... in turn."""
        import numpy as np

        if name in obj.attrs:
            keys = [name]
        else:
            keys = []
            while f"{name}{len(keys)}" in obj.attrs:
                if len(keys) >= MAX_NAME_CHUNKS:
                    raise _refuse(self.label, f"splits its {what} over more than {MAX_NAME_CHUNKS:,} attributes; "
                                              f"{NOT_OPENED}")
                keys.append(f"{name}{len(keys)}")
        out = []
        for key in keys:
            value = self.read(obj, key, what, self.file_size)
            for item in np.atleast_1d(value):
                item = item.decode("utf8", "replace") if isinstance(item, bytes) else item
                if not isinstance(item, str) or len(item) > MAX_NAME:
                    raise _refuse(self.label, f"has a {what} that is not a list of names; {NOT_OPENED}")
                out.append(item)
        return out


def keras_reads(f, attributes: AttributeReader, datasets: dict[int, StoredDataset], label: str) -> list[WeightRead]:
    """The datasets tf_keras reads when it loads the model and its optimizer, found as it finds them.

    Every weight it reads is read in full before shapes are compared, so one named twice (by two layers, or
    twice in one list) would be allocated twice: refused.
    """
    import h5py

    reads: list[WeightRead] = []
    read_from: set[int] = set()

    def resolve(group, name: str):
        try:
            return h5py.h5o.open(group.id, name.encode("utf-8", "surrogateescape"))
        except (KeyError, ValueError, RuntimeError, OSError):
            return None  # tf_keras stops at a missing name before reading anything further

    def weights_of(group, what: str) -> None:
        for name in attributes.names(group, "weight_names", f"list of {what} weight names"):
            oid = resolve(group, name)
            if oid is None or h5py.h5i.get_type(oid) != h5py.h5i.DATASET:
                continue
            address = _address(oid)
            if address in read_from:
                raise _refuse(label, f"names the weight '{_shown(name)}' more than once; {NOT_OPENED}")
            read_from.add(address)
            reads.append(WeightRead(name, datasets[address]))

    weights = f.get("model_weights")
    if isinstance(weights, h5py.Group):
        for attr in ("keras_version", "backend"):
            attributes.check(weights, attr, "Keras version", MAX_NAME)
        for name in attributes.names(weights, "layer_names", "list of layer names"):
            oid = resolve(weights, name)
            if oid is not None and h5py.h5i.get_type(oid) == h5py.h5i.GROUP:
                weights_of(h5py.Group(oid), "layer")
            elif oid is not None:
                attributes.check(h5py.Dataset(oid), "weight_names", "list of weight names", attributes.file_size)
        if isinstance(weights.get("top_level_model_weights"), h5py.Group):
            weights_of(weights["top_level_model_weights"], "model")
    optimizer = f.get("optimizer_weights")
    if isinstance(optimizer, h5py.Group):
        weights_of(optimizer, "optimizer")
    return reads


def check_unstored(reads: list[WeightRead], declared_params: int, label: str) -> None:
    """Refuse weights that declare more bytes than the file stores, beyond what the config's parameters need:
    tf_keras allocates every declared byte of a never-written dataset before it compares shapes."""
    unstored = [(r.dataset.declared - r.dataset.stored, r) for r in reads if r.dataset.declared > r.dataset.stored]
    total = sum(n for n, _ in unstored)
    allowance = BYTES_PER_PARAM * declared_params + UNSTORED_SLACK
    if total > allowance:
        largest, read = max(unstored, key=lambda item: item[0])
        raise _refuse(label, f"declares {megabytes(total)} of weights that it does not store (the weight "
                             f"'{_shown(read.name)}' alone {megabytes(largest)}), beyond the {megabytes(allowance)} "
                             "its model's config allows; reading it would take that memory, so it was not opened")
