"""The fast frame reader takes what it can and leaves the rest to wsproto: together they must
read every byte stream exactly as wsproto alone does (messages, and the same protocol errors)."""

import random
import struct

import pytest
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed

from web.ws_frames import FAST_PAYLOAD_LIMIT, FrameReader, text_frame


def frame(payload: bytes, *, opcode: int = 1, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04",
          rsv: int = 0, length_form: str = "shortest") -> bytes:
    """A client frame built by hand, so that malformed ones can be made too."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length_form == "shortest" and n < 126:
        head += bytes([mask_bit | n])
    elif length_form in ("shortest", "16") and n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def wsproto_messages(data: bytes) -> tuple[list, object]:
    """Whole messages as wsproto reads them (text as str), and the close code of the error it
    raised (or of the close frame it read), else None."""
    protocol = FrameProtocol(client=False, extensions=[])
    protocol.receive_bytes(data)
    messages, parts, ended = [], [], None
    try:
        for f in protocol.received_frames():
            if f.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                parts.append(f.payload)
                if f.message_finished:
                    first = parts[0]
                    messages.append("".join(parts) if isinstance(first, str) else b"".join(parts))
                    parts = []
            elif f.opcode is Opcode.CLOSE:
                ended = ("close", f.payload[0])
                break
            else:
                messages.append((f.opcode.name, bytes(f.payload)))
    except ParseFailed as exc:
        ended = ("error", exc.code)
    return messages, ended


def read_in_chunks(data: bytes, cuts: list[int]) -> tuple[list, object]:
    """The reader fed `data` cut at `cuts`, then wsproto on whatever it handed over."""
    reader, messages, handed = FrameReader(), [], b""
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    for i, piece in enumerate(pieces):
        got, rest = reader.feed(piece)
        messages += got
        if rest is not None:
            handed = rest + b"".join(pieces[i + 1:])
            break
    more, ended = wsproto_messages(handed)
    return messages + more, ended


REPORT = ('{"command":"message","identifier":"{\\"channel\\":\\"GatewayChannel\\"}",'
          '"data":"{\\"action\\":\\"delivery_report\\",\\"message_id\\":\\"msg_1\\",\\"status\\":\\"sent\\"}"}')

STREAMS = {
    "reports": [frame(REPORT.encode()) for _ in range(5)],
    "empty text": [frame(b"")],
    "binary": [frame(b"\x00\xff\x10", opcode=2), frame(b"ok")],
    "utf-8 text": [frame("héllo ☎ 😀".encode())],
    "16-bit length": [frame(b"x" * 126), frame(b"y" * 1000), frame(b"z" * 65535)],
    "64-bit length": [frame(b"a"), frame(b"b" * 70_000)],
    "just over the fast limit": [frame(b"c" * (FAST_PAYLOAD_LIMIT + 1)), frame(b"after")],
    "ping in the middle": [frame(b"one"), frame(b"are you there", opcode=9), frame(b"two")],
    "pong": [frame(b"one"), frame(b"", opcode=10), frame(b"two")],
    "fragmented": [frame(b"one"), frame(b"par", fin=False), frame(b"ts", opcode=0), frame(b"two")],
    "fragmented with a ping inside": [frame(b"a", fin=False), frame(b"", opcode=9), frame(b"b", opcode=0)],
    "close": [frame(b"one"), frame(struct.pack("!H", 1000), opcode=8), frame(b"after close")],
    "unmasked": [frame(b"one"), frame(b"two", mask=None)],
    "reserved bit": [frame(b"one"), frame(b"two", rsv=4)],
    "unknown opcode": [frame(b"one"), frame(b"two", opcode=3)],
    "invalid utf-8": [frame(b"one"), frame(b"\xff\xfe"), frame(b"two")],
    "lone surrogate": [frame(b"\xed\xa0\x80")],
    "non-minimal 16-bit length": [frame(b"one"), frame(b"short", length_form="16")],
    "non-minimal 64-bit length": [frame(b"one"), frame(b"short", length_form="64")],
    "continuation without a start": [frame(b"one"), frame(b"two", opcode=0)],
    "zero mask": [frame(b"zeros", mask=b"\x00\x00\x00\x00")],
}


@pytest.mark.parametrize("name", STREAMS)
def test_reader_then_wsproto_read_every_stream_as_wsproto_does(name):
    data = b"".join(STREAMS[name])
    expected = wsproto_messages(data)
    assert read_in_chunks(data, []) == expected
    frame_ends = [sum(map(len, STREAMS[name][:i + 1])) for i in range(len(STREAMS[name]) - 1)]
    assert read_in_chunks(data, frame_ends) == expected


@pytest.mark.parametrize("name", [n for n in STREAMS if sum(map(len, STREAMS[n])) < 2_000])
def test_a_stream_cut_anywhere_reads_the_same(name):
    data = b"".join(STREAMS[name])
    expected = wsproto_messages(data)
    for cut in range(1, len(data)):
        assert read_in_chunks(data, [cut]) == expected, cut


def test_random_streams_cut_at_random_read_the_same():
    rand = random.Random(20261201)
    kinds = list(STREAMS.values())
    for _ in range(300):
        frames = [f for kind in rand.choices(kinds, k=rand.randint(1, 4)) for f in kind if len(f) < 5_000]
        data = b"".join(frames)
        cuts = sorted(rand.sample(range(1, len(data)), min(len(data) - 1, rand.randint(0, 6)))) if len(data) > 1 else []
        assert read_in_chunks(data, cuts) == wsproto_messages(data)


def test_whole_frames_are_taken_and_a_partial_one_waits_for_the_rest():
    reader = FrameReader()
    one, two = frame(b"first"), frame(b"second")
    assert reader.feed(one + two[:3]) == (["first"], None)
    assert reader.feed(two[3:]) == (["second"], None)
    assert reader.feed(b"") == ([], None)


def test_the_hand_over_is_at_the_first_frame_it_does_not_take_and_is_final():
    reader = FrameReader()
    ping = frame(b"", opcode=9)
    messages, rest = reader.feed(frame(b"a") + ping + frame(b"b"))
    assert messages == ["a"] and rest == ping + frame(b"b")
    assert reader.handed_over
    with pytest.raises(RuntimeError):
        reader.feed(frame(b"c"))


def test_a_large_frame_is_handed_over_before_it_is_buffered():
    big = frame(b"x" * (FAST_PAYLOAD_LIMIT + 10))
    assert FrameReader().feed(big[:10]) == ([], big[:10])


@pytest.mark.parametrize("text", ["", "x", "y" * 125, "z" * 126, "é" * 40_000, "w" * 70_000])
def test_text_frame_is_what_wsproto_writes(text):
    server = FrameProtocol(client=False, extensions=[])
    assert text_frame(text) == server.send_data(text, fin=True)


def test_the_close_codes_wsproto_reports_are_kept():
    """A sanity check of the helper itself: the errors above really are errors."""
    assert wsproto_messages(frame(b"\xff"))[1] == ("error", CloseReason.INVALID_FRAME_PAYLOAD_DATA)
    assert wsproto_messages(frame(b"x", mask=None))[1] == ("error", CloseReason.PROTOCOL_ERROR)
