"""Segment counts for known texts, especially at part boundaries."""

import pytest

from actors import segments
from actors.segments import GSM7, MAX_SEGMENTS, UCS2, Segmentation, segments_for

CYR = "я"  # BMP, not in GSM 03.38: forces UCS-2, 1 code unit
EMOJI = "😀"  # outside the BMP: a surrogate pair, 2 code units

CASES = [
    # (id, text, encoding, segments, units)
    ("empty", "", GSM7, 1, 0),
    ("one char", "a", GSM7, 1, 1),
    ("160 plain", "a" * 160, GSM7, 1, 160),
    ("161 plain", "a" * 161, GSM7, 2, 161),
    ("306 plain", "a" * 306, GSM7, 2, 306),
    ("307 plain", "a" * 307, GSM7, 3, 307),
    ("459 plain", "a" * 459, GSM7, 3, 459),
    ("460 plain", "a" * 460, GSM7, 4, 460),
    ("1530 plain is 10 parts", "a" * 1530, GSM7, 10, 1530),
    ("1531 plain is 11 parts", "a" * 1531, GSM7, 11, 1531),
    ("80 euro = 160 septets", "€" * 80, GSM7, 1, 160),
    # 76 pairs fill 152 septets, the 77th would straddle: 76 + 5.
    ("81 euro", "€" * 81, GSM7, 2, 162),
    ("153 euro", "€" * 153, GSM7, 3, 306),
    ("159 plain + euro", "a" * 159 + "€", GSM7, 2, 161),
    ("158 plain + euro", "a" * 158 + "€", GSM7, 1, 160),
    # 152 + ESC would end part 1 with ESC: part 1 holds 152, part 2 153,
    # one septet left for part 3, although 306 septets naively make 2.
    ("escape never split", "a" * 152 + "€" + "a" * 152, GSM7, 3, 306),
    ("escape fits exactly", "a" * 151 + "€" + "a" * 153, GSM7, 2, 306),
    ("every extension char", "\f^{}\\[~]|€", GSM7, 1, 20),
    ("newline and CR", "a\nb\r\nc", GSM7, 1, 6),
    ("é is basic", "café", GSM7, 1, 4),
    ("á is not", "cafá", UCS2, 1, 4),
    ("ç is not (only Ç)", "ç", UCS2, 1, 1),
    ("Ç is basic", "Ç", GSM7, 1, 1),
    ("Greek capitals are basic", "ΔΦΓΛΩΠΨΣΘΞ", GSM7, 1, 10),
    ("$ ¤ £ ¥ § ¡ ¿ are basic", "$¤£¥§¡¿", GSM7, 1, 7),
    ("backtick is not GSM", "`", UCS2, 1, 1),
    ("tab is not GSM", "\t", UCS2, 1, 1),
    ("ESC itself is not text", "\x1b", UCS2, 1, 1),
    ("70 cyrillic", CYR * 70, UCS2, 1, 70),
    ("71 cyrillic", CYR * 71, UCS2, 2, 71),
    ("134 cyrillic", CYR * 134, UCS2, 2, 134),
    ("135 cyrillic", CYR * 135, UCS2, 3, 135),
    ("one non-GSM char turns all UCS-2", "a" * 70 + "á", UCS2, 2, 71),
    ("euro costs 1 unit in UCS-2", "€" * 69 + CYR, UCS2, 1, 70),
    ("one emoji", EMOJI, UCS2, 1, 2),
    ("35 emoji = 70 units", EMOJI * 35, UCS2, 1, 70),
    # 33 pairs fill 66 units, the 34th would straddle: 33 + 3.
    ("36 emoji", EMOJI * 36, UCS2, 2, 72),
    ("69 units + emoji", CYR * 69 + EMOJI, UCS2, 2, 71),
    ("surrogate pair never split", CYR * 66 + EMOJI + CYR * 66, UCS2, 3, 134),
    ("surrogate pair fits exactly", CYR * 65 + EMOJI + CYR * 67, UCS2, 2, 134),
    ("emoji in GSM text", "hello " + EMOJI, UCS2, 1, 8),
    # Family emoji: 4 astral code points + 3 ZWJ = 11 units.
    ("ZWJ sequence", "👨\u200d👩\u200d👧\u200d👦", UCS2, 1, 11),
]


@pytest.mark.parametrize(
    ("text", "encoding", "count", "units"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_segments_for(text, encoding, count, units):
    assert segments_for(text) == Segmentation(
        encoding=encoding, segments=count, units=units
    )


def test_tables_have_the_standard_sizes():
    assert len(segments._GSM7_BASIC) == 127  # 128 code points minus ESC
    assert len(segments._GSM7_EXTENSION) == 10
    assert not segments._GSM7_BASIC & segments._GSM7_EXTENSION


def test_max_segments():
    assert MAX_SEGMENTS == 10
