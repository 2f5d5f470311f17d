"""An upload in transit: counted, hashed and typed chunk by chunk on its way to the store.

`Inspection.passing(chunks)` yields the same bytes it is given, and raises as soon as a rule
is broken, before the offending bytes are passed on (the store then discards what it got):

* `TooLarge` the moment the running size crosses the limit;
* `UnsupportedType` once the first `SAMPLE_BYTES` (or the whole, if shorter) are not of an
  allowed type (see `actors.filetypes`), and for text types whenever a later chunk is not text;
* `InvalidInput` for an empty file.

So nothing is written for a disguised file, and memory holds one sample and one chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Collection

from actors.errors import InvalidInput, TooLarge, UnsupportedType
from actors.filetypes import SAMPLE_BYTES, TEXT_TYPES, TextCheck, detect


class Inspection:
    def __init__(self, *, limit: int, allowed: Collection[str]) -> None:
        self.limit = limit
        self.allowed = allowed
        self.size = 0
        self.content_type: str | None = None
        self._sha256 = hashlib.sha256()
        self._text: TextCheck | None = None

    @property
    def sha256(self) -> bytes:
        return self._sha256.digest()

    async def passing(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        sample = bytearray()
        async for chunk in chunks:
            self._count(chunk)
            if self.content_type is None:
                sample += chunk
                if len(sample) < SAMPLE_BYTES:
                    continue
                self._decide(bytes(sample), complete=False)
                chunk, sample = bytes(sample), bytearray()
            self._check_text(chunk)
            yield chunk
        if self.content_type is None:
            if not sample:
                raise InvalidInput("the file is empty")
            self._decide(bytes(sample), complete=True)
            self._check_text(bytes(sample))
            yield bytes(sample)
        if self._text is not None and not self._text.finish():
            raise UnsupportedType(f"the file is not valid {self.content_type}: cut mid-character")

    def _count(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"the file is larger than the limit of {self.limit} bytes")
        self._sha256.update(chunk)

    def _decide(self, sample: bytes, *, complete: bool) -> None:
        detected = detect(sample, complete=complete)
        if detected is None or detected not in self.allowed:
            found = f"{detected}, which is not accepted" if detected else "not recognised"
            raise UnsupportedType(
                f"the file's content is {found}; accepted: {', '.join(sorted(self.allowed))}"
            )
        self.content_type = detected
        if detected in TEXT_TYPES:
            self._text = TextCheck()

    def _check_text(self, chunk: bytes) -> None:
        if self._text is not None and not self._text.feed(chunk):
            raise UnsupportedType(f"the file is not valid {self.content_type}: binary data in text")
