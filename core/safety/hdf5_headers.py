"""How many bytes reading a variable-length string attribute will allocate, told from the file's bytes.

Each element is (length, reference to a global heap object), and many elements may refer to one object, so a
small file's name list can read as gigabytes; HDF5 has no call that tells the total before reading, so the
attribute message is read from the object header directly. Only what h5py writes for Keras is understood
(object headers v1-2, attribute messages v1-3 in the header); the caller refuses anything else.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

ATTRIBUTE = 0x000C
CONTINUATION = 0x0010
ATTRIBUTE_INFO = 0x0015
VLEN_CLASS = 9
MAX_HEADER_BLOCKS = 64
MAX_MESSAGES = 65_536


def _padded(size: int, version: int) -> int:
    """Version 1 attribute messages pad their name, datatype and dataspace to multiples of 8 bytes."""
    return (size + 7) // 8 * 8 if version == 1 else size


class HeaderError(Exception):
    """The object header is not one this reader understands (the caller refuses the file)."""


@dataclass(frozen=True)
class VlenElement:
    length: int  # in elements of the base type (bytes, for a string)
    heap_object: bytes  # the global heap collection's address and the object's index, as stored


class HeaderReader:
    """Reads object headers from an open file: addresses are relative to base (the user block's size)."""

    def __init__(self, fh: BinaryIO, base: int, offset_size: int, length_size: int, file_size: int):
        if offset_size not in (2, 4, 8) or length_size not in (2, 4, 8):
            raise HeaderError("unusual address sizes")
        self.fh, self.base, self.file_size = fh, base, file_size
        self.offset_size, self.length_size = offset_size, length_size

    def _read(self, address: int, size: int) -> bytes:
        if address < 0 or size < 0 or self.base + address + size > self.file_size:
            raise HeaderError("an object header lies outside the file")
        self.fh.seek(self.base + address)
        data = self.fh.read(size)
        if len(data) != size:
            raise HeaderError("an object header lies outside the file")
        return data

    def _uint(self, data: bytes, pos: int, size: int) -> int:
        if pos + size > len(data):
            raise HeaderError("a truncated object header message")
        return int.from_bytes(data[pos:pos + size], "little")

    def _messages(self, address: int):
        """(type, flags, body) of every message in an object header, its continuation blocks included."""
        head = self._read(address, 16)
        if head[:4] == b"OHDR":
            version = 2
            flags = self._read(address + 5, 1)[0]
            pos = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
            width = 1 << (flags & 0x03)
            size = self._uint(self._read(address + pos, width), 0, width)
            blocks = [(address + pos + width, size)]
        elif head[0] == 1:
            version, flags = 1, 0
            blocks = [(address + 16, self._uint(head, 8, 4))]
        else:
            raise HeaderError("an object header of an unknown version")
        count = 0
        for _ in range(MAX_HEADER_BLOCKS):
            if not blocks:
                return
            start, size = blocks.pop(0)
            if size > self.file_size:
                raise HeaderError("an object header larger than the file")
            data = self._read(start, size)
            if version == 2 and data[:4] == b"OCHK":
                data = data[4:-4]  # the signature and the checksum
            pos, header = 0, (8 if version == 1 else 4 + (2 if flags & 0x04 else 0))
            while pos + header <= len(data):
                if version == 1:
                    mtype, msize, mflags = self._uint(data, pos, 2), self._uint(data, pos + 2, 2), data[pos + 4]
                else:
                    mtype, msize, mflags = data[pos], self._uint(data, pos + 1, 2), data[pos + 3]
                pos += header
                body = data[pos:pos + msize]
                if len(body) != msize:
                    break  # version 2's checksum, or the gap at a block's end
                pos += msize
                count += 1
                if count > MAX_MESSAGES:
                    raise HeaderError("an object header with too many messages")
                if mtype == CONTINUATION:
                    blocks.append((self._uint(body, 0, self.offset_size),
                                   self._uint(body, self.offset_size, self.length_size)))
                yield mtype, mflags, body
        if blocks:
            raise HeaderError("an object header spread over too many blocks")

    def _dense_storage(self, body: bytes) -> bool:
        """Whether an attribute info message points at a fractal heap (its address is not all ones)."""
        pos = 2 + (2 if len(body) > 1 and body[1] & 0x01 else 0)
        return self._uint(body, pos, self.offset_size) != (1 << (8 * self.offset_size)) - 1

    def vlen_elements(self, address: int, name: bytes, count: int) -> list[VlenElement]:
        """The elements of the variable-length attribute `name` (count of them) of the object at address."""
        found = []
        for mtype, mflags, body in self._messages(address):
            if mtype == ATTRIBUTE_INFO and self._dense_storage(body):
                # HDF5 then looks for attributes in a heap elsewhere, which this reader does not follow.
                raise HeaderError("attributes kept in dense storage")
            if mtype != ATTRIBUTE:
                continue
            if mflags & 0x02:
                raise HeaderError("a shared attribute message")
            version = body[0] if body else 0
            if version not in (1, 2, 3):
                raise HeaderError("an attribute message of an unknown version")
            if version > 1 and body[1] & 0x03:
                raise HeaderError("an attribute with a shared datatype or dataspace")
            name_size, type_size, space_size = struct.unpack_from("<HHH", body, 2)
            pos = 8 if version < 3 else 9
            if body[pos:pos + name_size].rstrip(b"\0") != name:
                continue
            pos += _padded(name_size, version)
            datatype = body[pos:pos + type_size]
            pos += _padded(type_size, version) + _padded(space_size, version)
            found.append((datatype, body[pos:]))
        if len(found) != 1:
            raise HeaderError("an attribute kept outside its object header" if not found else "a repeated attribute")
        datatype, data = found[0]
        if len(datatype) < 8 or datatype[0] & 0x0F != VLEN_CLASS:
            raise HeaderError("an attribute whose stored type differs from the one HDF5 reports")
        width = 4 + self.offset_size + 4
        if len(data) < count * width:
            raise HeaderError("an attribute with fewer elements stored than it declares")
        return [VlenElement(self._uint(data, i * width, 4), data[i * width + 4:(i + 1) * width])
                for i in range(count)]
