"""JSON integers and numbers as regular expressions, with numeric bounds enforced digit by digit.

The regex compiler (outlines-core) writes ``-?(0|[1-9][0-9]*)`` for every integer whatever its bounds, so here an
``integer`` or ``number`` schema becomes a regex of exactly the values its bounds allow (``engine_backend.grammar``
splices it into the compiled schema). Bounds: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``
(draft 6+ numbers, and draft 4's booleans next to ``minimum``/``maximum``), one- or two-sided, negative included.

- integers: at most ``INTEGER_DIGITS`` (18) digits, so an integer fits int64 and a model cannot write digits until
  ``max_tokens`` (a bound beyond that is clamped). A float bound is met both as written (its ``repr``) and as the
  double it is, which differ past 2**53. JSON syntax: no leading zeros, no "-0". A range is split by digit
  length, and a same-length range by its first differing digit (``_same_length``). ``multipleOf`` (other than 1 or
  1/2**k, which every integer meets) is enforced by listing the range's values when there are at most
  ``ENUM_RANGE_LIMIT``, and refused otherwise.
- numbers: no exponent, at most ``INTEGER_PART_DIGITS`` (15) digits before the point and ``FRACTION_DIGITS`` (15)
  after it, so every number is a multiple of 10**-15 below 10**15 in magnitude ("the grid"). Each bound becomes the
  first (last) grid value that meets it both exactly, the decimal compared with the bound as written (a float
  bound's ``repr``: 0.1 is one tenth), and as the double a validator parses the text to: "31.999999999999999" is
  below 32 but parses to 32.0, so ``exclusiveMaximum: 32`` leaves it out. Between these two inclusive grid bounds
  the integer part is a range like an integer's; at the two boundary integer parts the fraction is compared digit
  by digit with the bound's (``_fraction``): for [0, 1] "1" and "1.0" are allowed, "1.5" is not; below an
  exclusive 1, "0.999" is, "1" and "1.0" are not. "-0" and "-0.0" (which are 0) are allowed where 0 and
  negative numbers are.
  ``multipleOf`` on a number is refused (validators divide floats: 0.29 is no multiple of 0.01 for them).
- unbounded integers and numbers get the same digit caps.

``ValueError`` (without the "unsupported json_schema" prefix, which the caller adds) for a bound that is not a
finite number, a ``multipleOf`` that cannot be enforced, or bounds no value meets.
"""
from __future__ import annotations

import math
from fractions import Fraction

INTEGER_DIGITS = 18  # an integer has at most 18 digits: |n| < 10**18 < 2**63
INTEGER_PART_DIGITS = 15  # a number has at most 15 digits before the point...
FRACTION_DIGITS = 15  # ...and at most 15 after it, no exponent
ENUM_RANGE_LIMIT = 1000  # multipleOf on integers: enforced by listing a range of at most this many values

BOUND_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")

SCALE = 10 ** FRACTION_DIGITS  # a number on the grid is an integer count of 10**-15


def schema_regex(schema: dict, kind: str) -> str:
    """The regex of the JSON texts an ``integer`` or ``number`` schema (``kind``) allows, bounds and caps enforced:
    one group, "(?:...)", to splice anywhere."""
    low, high = bounds(schema)
    step = schema.get("multipleOf")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step)
                             or step <= 0):
        raise ValueError(f"multipleOf must be a positive number, got {step!r}")
    if kind == "number":
        if step is not None:
            raise ValueError(f"multipleOf on a number cannot be enforced (only on an integer range of at most "
                             f"{ENUM_RANGE_LIMIT} values)")
        cap = 10 ** INTEGER_PART_DIGITS * SCALE - 1
        lo = -cap if low is None else max(-cap, _grid_low(*low))
        hi = cap if high is None else min(cap, -_grid_low(-high[0], high[1]))
        if lo > hi:
            raise ValueError(f"no number of at most {INTEGER_PART_DIGITS} digits before the point and "
                             f"{FRACTION_DIGITS} after it satisfies the bounds")
        return number_regex(lo, hi)
    cap = 10 ** INTEGER_DIGITS - 1
    lo = -cap if low is None else max(-cap, _integer_low(*low))
    hi = cap if high is None else min(cap, -_integer_low(-high[0], high[1]))
    if step is not None and not _every_integer(step):
        if hi - lo >= ENUM_RANGE_LIMIT:
            raise ValueError(f"multipleOf is enforced only on an integer range of at most {ENUM_RANGE_LIMIT} "
                             f"values with both bounds given")
        values = [v for v in range(lo, hi + 1) if is_multiple(v, step)]
        if not values:
            raise ValueError("no integer satisfies the bounds and multipleOf")
        return "(?:" + "|".join(map(str, values)) + ")"
    if lo > hi:
        raise ValueError(f"no integer of at most {INTEGER_DIGITS} digits satisfies the bounds")
    return integer_regex(lo, hi)


def bounds(schema: dict) -> tuple[tuple | None, tuple | None]:
    """(low, high): the strongest lower and upper bound of a schema, each ``(value, inclusive)`` or None."""
    lows, highs = [], []
    for key, out, exclusive in (("minimum", lows, "exclusiveMinimum"), ("maximum", highs, "exclusiveMaximum")):
        if key in schema:  # draft 4: "exclusiveMinimum": true makes the minimum exclusive
            out.append((_finite(key, schema[key]), schema.get(exclusive) is not True))
        if not isinstance(schema.get(exclusive, False), bool):  # draft 6+: a number
            out.append((_finite(exclusive, schema[exclusive]), False))
    low = max(lows, key=lambda b: (b[0], not b[1])) if lows else None  # the larger; exclusive on a tie
    high = min(highs, key=lambda b: (b[0], b[1])) if highs else None  # the smaller; exclusive on a tie
    return low, high


def satisfies(value, schema: dict) -> bool:
    """Whether a JSON number meets the schema's bounds and multipleOf, compared as a validator compares them."""
    low, high = bounds(schema)
    step = schema.get("multipleOf")
    return ((low is None or (value >= low[0] if low[1] else value > low[0]))
            and (high is None or (value <= high[0] if high[1] else value < high[0]))
            and (step is None or is_multiple(value, step)))


def is_multiple(value, step) -> bool:
    """jsonschema's multipleOf: exact for integers, a float division otherwise."""
    if isinstance(step, float) or isinstance(value, float):
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % step == 0


def _every_integer(step) -> bool:
    """Every integer is a multiple of 1 and of 1/2**k (the float division is exact, the quotient whole)."""
    return step == 1 or (isinstance(step, float) and step < 1 and math.frexp(step)[0] == 0.5)


def _finite(key: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return value


def _integer_low(bound, inclusive: bool) -> int:
    """The least integer that meets a lower bound both as written and as the double it is (they differ past 2**53)."""
    values = [bound, Fraction(repr(bound))] if isinstance(bound, float) else [bound]
    return max(math.ceil(v) if inclusive else math.floor(v) + 1 for v in values)


def _grid_low(bound, inclusive: bool) -> int:
    """The least grid value (in units of 10**-15) that meets a lower bound both exactly (the bound as written) and
    as the double it parses to; a bound beyond the caps gives a grid value beyond them."""
    written = Fraction(repr(bound)) if isinstance(bound, float) else Fraction(bound)
    if abs(written) > 10 ** INTEGER_PART_DIGITS:  # clamped by the caller: no need for the doubles there
        return math.floor(written * SCALE) + 1 if written > 0 else math.ceil(written * SCALE) - 1
    n = math.ceil(written * SCALE)
    if inclusive:  # n >= written, so its double is >= the bound's
        return n
    if n == written * SCALE:
        n += 1
    above = math.nextafter(float(bound), math.inf)  # the double it must parse to at least
    halfway = (Fraction(above) + Fraction(float(bound))) / 2  # decimals past this parse to `above` or more
    n = max(n, math.ceil(halfway * SCALE))
    if float(Fraction(n, SCALE)) < above:  # a tie, rounded to the even double below
        n += 1
    return n


# --- integers --------------------------------------------------------------------------------------------------

def integer_regex(lo: int, hi: int) -> str:
    """The JSON integers lo..hi (inclusive, lo <= hi): negatives as "-" and their absolute values, never "-0"."""
    return _signed(lo, hi, _naturals, least_negative=1)


def _signed(lo: int, hi: int, nonnegative, least_negative: int) -> str:
    """lo..hi as one group: ``nonnegative(a, b)``'s alternatives for the values >= 0, and "-" before theirs for the
    absolute values of the negatives from ``least_negative`` on (1 for integers: no "-0"; 0 for numbers, where "-0"
    is 0); a symmetric range as one "-?" for both signs."""
    if lo < 0 and lo == -hi:
        zero = "0|" if least_negative else ""  # the unsigned values below least_negative: "0" for integers
        return "(?:" + zero + "-?" + _group(nonnegative(least_negative, hi)) + ")"
    alts = nonnegative(max(lo, 0), hi) if hi >= 0 else []
    if lo < 0:
        alts.append("-" + _group(nonnegative(max(-hi, least_negative), -lo)))
    return "(?:" + "|".join(alts) + ")"


def _naturals(lo: int, hi: int) -> list[str]:
    """Alternatives matching the decimal forms of lo..hi (0 <= lo <= hi); whole digit lengths become one
    ``[1-9][0-9]{m,n}``."""
    alts, whole = [], []
    for length, a, b in _segments(lo, hi):
        if length > 1 and a == 10 ** (length - 1) and b == 10 ** length - 1:
            whole.append(length)
        else:
            alts.append(_same_length(str(a), str(b)))
    if whole:  # the whole lengths are consecutive: only the first and the last segment can be partial
        alts.append("[1-9]" + _digits(whole[0] - 1, whole[-1] - 1))
    return alts


def _segments(lo: int, hi: int):
    """(digit length, first, last) covering lo..hi (0 <= lo), one per digit length."""
    while lo <= hi:
        length = len(str(lo))
        last = min(hi, 10 ** length - 1)
        yield length, lo, last
        lo = last + 1


def _same_length(lo: str, hi: str) -> str:
    """A regex for the digit strings from lo to hi, both of the same length (leading zeros allowed): the common
    prefix, then at the first differing digit: lo's digit followed by lo's tail..9s, the digits strictly between
    followed by anything, hi's digit followed by 0s..hi's tail (a tail already at its end merges into the middle)."""
    if lo == hi:
        return lo
    i = next(k for k in range(len(lo)) if lo[k] != hi[k])
    head, a, b = lo[:i], lo[i:], hi[i:]
    n = len(a) - 1  # digits after the first differing one
    if n == 0:
        return head + _class(int(a), int(b))
    alts, first, last, upper = [], int(a[0]), int(b[0]), None
    if a[1:] != "0" * n:
        alts.append(a[0] + _same_length(a[1:], "9" * n))
        first += 1
    if b[1:] != "9" * n:
        upper = b[0] + _same_length("0" * n, b[1:])
        last -= 1
    if first <= last:
        alts.append(_class(first, last) + _digits(n, n))
    if upper:
        alts.append(upper)
    return head + _group(alts)


def _class(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _digits(m: int, n: int, digit: str = "[0-9]") -> str:
    """m to n digits (0 <= m <= n)."""
    if n == 0:
        return ""
    return digit + ("" if m == n == 1 else f"{{{m}}}" if m == n else f"{{{m},{n}}}")


def _group(alts: list[str]) -> str:
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


# --- numbers ---------------------------------------------------------------------------------------------------

def number_regex(lo: int, hi: int) -> str:
    """The JSON numbers of the grid from lo to hi (inclusive, lo <= hi, in units of 10**-15): the values >= 0, and
    where negatives are allowed, "-" and the absolute values of those <= 0 (so "-0" where 0 is also allowed: one
    regex for both signs then)."""
    return _signed(lo, hi, _nonnegative, least_negative=0)


def _nonnegative(lo: int, hi: int) -> list[str]:
    """Alternatives for the grid values lo..hi (0 <= lo <= hi): the integer parts strictly inside (and at an end
    whose fraction is free) with any fraction, the integer part at each other end with its fraction compared."""
    (first, lo_fraction), (last, hi_fraction) = divmod(lo, SCALE), divmod(hi, SCALE)
    low = _fraction_digits(lo_fraction) if lo_fraction else None  # None: any fraction of `first`
    high = _fraction_digits(hi_fraction) if hi_fraction < SCALE - 1 else None  # "": only zeros after `last`
    if first == last:
        return [str(first) + _suffix(low, high)]
    alts = []
    if low is not None:
        alts.append(str(first) + _suffix(low, None))
        first += 1
    if high is not None:
        alts.append(str(last) + _suffix(None, high))
        last -= 1
    if first <= last:
        alts.append(_group(_naturals(first, last)) + _suffix(None, None))
    return alts


def _fraction_digits(units: int) -> str:
    """The digits after the point of a fraction of ``units`` 10**-15, without trailing zeros."""
    return str(units).zfill(FRACTION_DIGITS).rstrip("0")


def _suffix(low: str | None, high: str | None) -> str:
    """What follows the integer part: "." and 1 to 15 digits whose value 0.ddd is between low and high (digit
    strings, inclusive; None: no bound), and no fraction at all if 0 is allowed."""
    digits, zero = _fraction(low, high, FRACTION_DIGITS)
    if digits is None:
        return ""
    return f"(?:\\.{digits})?" if zero else f"\\.{digits}"


def _fraction(low: str | None, high: str | None, n: int) -> tuple[str | None, bool]:
    """(regex of the non-empty digit strings of at most n digits whose value 0.ddd is between low and high, or None
    if there are none; whether the empty string, value 0, is). low/high: digit strings ("5" is 0.5, more than
    "499"), inclusive, or None for no bound; a bound has at most n digits."""
    if low == "":
        low = None  # >= 0: always met
    if high == "9" * n:
        high = None  # <= 0.99..9 of n digits: always met
    zero = low is None
    if n == 0:
        return None, zero
    if low is None and high is None:
        return _digits(1, n), True
    if low is None and high == "":
        return _digits(1, n, "0"), True  # only zeros
    lo_digit = int(low[0]) if low else 0
    hi_digit = int(high[:1] or "0") if high is not None else 9
    alts, free = [], []
    for d in range(lo_digit, hi_digit + 1):
        rest_low = (low[1:] or None) if low and d == lo_digit else None  # "": >= 0, met
        rest_high = high[1:] if high is not None and d == hi_digit and n > 1 else None  # no digit left: met
        if rest_low is None and rest_high is None:
            free.append(d)  # strictly inside: any digits may follow
            continue
        rest, rest_zero = _fraction(rest_low, rest_high, n - 1)
        alts.append(str(d) + ("" if rest is None else f"(?:{rest})?" if rest_zero else rest))
    if free:  # consecutive digits
        alts.append(_class(free[0], free[-1]) + _digits(0, n - 1))
    return _group(alts), zero
