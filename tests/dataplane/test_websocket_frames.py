"""The frame tracker that lets a drain put a close frame between frames, never inside one."""

from __future__ import annotations

import os
import random
import struct

import pytest

from bgproxy.dataplane.websocket import FrameTracker, close_frame


def frame(payload: bytes, *, masked: bool, opcode: int = 0x2) -> bytes:
    n = len(payload)
    head = bytes((0x80 | opcode,))
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes((bit | n,))
    elif n < 65536:
        head += bytes((bit | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((bit | 127,)) + struct.pack("!Q", n)
    if masked:  # the tracker reads headers only, so the payload need not really be masked here
        return head + os.urandom(4) + payload
    return head + payload


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_boundaries_are_found_however_the_stream_is_split(masked: bool, seed: int) -> None:
    rnd = random.Random(seed)
    sizes = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000]
    frames = [frame(rnd.randbytes(s), masked=masked) for s in rnd.sample(sizes, len(sizes))]
    stream = b"".join(frames)
    ends = set()
    total = 0
    for f in frames:
        total += len(f)
        ends.add(total)
    tracker = FrameTracker()
    pos = 0
    while pos < len(stream):
        step = rnd.choice([1, 2, 3, 7, 13, 100, 4096, 70001])
        tracker.feed(stream[pos : pos + step])
        pos = min(pos + step, len(stream))
        assert tracker.at_boundary == (pos in ends), pos
    assert tracker.at_boundary


def test_close_frames_carry_going_away() -> None:
    assert close_frame(masked=False) == b"\x88\x02\x03\xe9"
    masked = close_frame(masked=True)
    assert masked[:2] == b"\x88\x82" and len(masked) == 8
    mask = masked[2:6]
    assert bytes(b ^ mask[i] for i, b in enumerate(masked[6:])) == b"\x03\xe9"
