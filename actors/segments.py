"""How many SMS segments a text costs.

Gateways are budgeted in segments, not messages, and the API reports the
count before sending, so the count must match what the phone's modem will
actually transmit: GSM 03.38 7-bit when every character fits the default
alphabet (with its extension table), UCS-2 otherwise.  Concatenated parts
lose room to the User Data Header, and a part never splits an escape pair
(GSM-7) or a surrogate pair (UCS-2), which is what the naive
``ceil(units / per_part)`` gets wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = [
    "GSM7",
    "MAX_SEGMENTS",
    "UCS2",
    "Segmentation",
    "segments_for",
]

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# Longest concatenated message the API accepts; ``segments_for`` itself
# counts any length, rejecting is the caller's decision.
MAX_SEGMENTS = 10

# GSM 03.38 default alphabet, code points 0x00..0x7F in order, without
# 0x1B (ESC), which introduces an extension-table character.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ" "ÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# GSM 03.38 extension table: each is sent as ESC + char, two septets.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_GSM7_SINGLE = 160
_GSM7_PER_PART = 153
_UCS2_SINGLE = 70
_UCS2_PER_PART = 67


@attrs.frozen
class Segmentation:
    """The encoding a text needs and what it costs in that encoding."""

    encoding: str  # GSM7 or UCS2
    segments: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2


def segments_for(text: str) -> Segmentation:
    """Count the segments ``text`` occupies when sent as one SMS.

    GSM-7 is used when every character is in the basic or extension table
    (extension characters cost 2 septets); 160 septets fit one segment, a
    longer text goes in parts of 153.  Otherwise UCS-2: 70 code units in
    one segment, 67 per part, characters beyond the BMP costing 2.  The
    2-unit characters are never split across parts, so a part may hold
    one unit less.  Empty text is one segment of zero units.
    """
    if _fits_gsm7(text):
        costs = [2 if ch in _GSM7_EXTENSION else 1 for ch in text]
        single, per_part, encoding = _GSM7_SINGLE, _GSM7_PER_PART, GSM7
    else:
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        single, per_part, encoding = _UCS2_SINGLE, _UCS2_PER_PART, UCS2
    units = sum(costs)
    if units <= single:
        return Segmentation(encoding=encoding, segments=1, units=units)
    return Segmentation(
        encoding=encoding, segments=_count_parts(costs, per_part), units=units
    )


def _fits_gsm7(text: str) -> bool:
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in text)


def _count_parts(costs: Iterable[int], per_part: int) -> int:
    """Fill parts greedily; a character that does not fit opens a new part."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            parts += 1
            used = 0
        used += cost
    return parts
