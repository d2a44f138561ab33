"""Phone numbers: the E.164 fast path answers exactly as `phonenumbers.parse` would."""

import random

import phonenumbers
import pytest

from web.models import InvalidPhone, normalise_phone


def _by_parse(raw: str, region: str) -> str:
    """The reading every number took before the fast path (and still takes when it is not E.164)."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return "error: not a phone number"
    if not phonenumbers.is_possible_number(number):
        return "error: not a possible phone number (wrong length)"
    if not phonenumbers.is_valid_number(number):
        return "error: not a valid phone number for its region"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _ours(raw: str, region: str) -> str:
    try:
        return normalise_phone(raw, region)
    except InvalidPhone as exc:
        message = str(exc)  # "not a phone number (why)": the why is the library's own wording
        return "error: " + (message.split(" (")[0] if message.startswith("not a phone number") else message)


def _e164_examples() -> list[str]:
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
                     phonenumbers.PhoneNumberType.TOLL_FREE, phonenumbers.PhoneNumberType.VOIP):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                numbers.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    return numbers


def test_every_region_example_reads_the_same():
    examples = _e164_examples()
    assert len(examples) > 500
    for raw in examples:
        assert _ours(raw, "US") == _by_parse(raw, "US") == raw, raw


def test_random_e164_strings_read_the_same_valid_or_not():
    rng = random.Random(5)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    valid = 0
    for _ in range(20_000):
        code = str(rng.choice(codes))
        national = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15 - len(code))))
        if rng.random() < 0.1:
            national = "0" * rng.randint(1, 3) + national  # leading zeros and national prefixes
        raw = "+" + code + national
        if len(raw) - 1 > 15:
            continue
        expected = _by_parse(raw, "GB")
        assert _ours(raw, "GB") == expected, raw
        valid += not expected.startswith("error")
    assert valid > 500  # the comparison covered valid numbers, not only refusals


@pytest.mark.parametrize("raw, region, expected", [
    ("+14155552671", "US", "+14155552671"),
    ("(415) 555-2671", "US", "+14155552671"),      # national form: the whole way
    ("+44 7911 123456", "US", "+447911123456"),    # punctuation: the whole way
    ("+4407911123456", "US", "+447911123456"),     # a national prefix after the country code
    ("+390612345678", "US", "+390612345678"),      # Italy keeps its leading zero
    ("+1415555267", "US", "error: not a possible phone number (wrong length)"),
])
def test_known_numbers(raw, region, expected):
    assert _ours(raw, region) == expected
