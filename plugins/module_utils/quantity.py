# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Kubernetes ``resource.Quantity`` exactly as apimachinery (v0.24) parses and prints it.

Values are exact rationals (never floats); parsed values are rounded away from zero to nano units
like apimachinery does; ``value()`` and ``milli_value()`` round up; ``str()`` is the canonical form:

* DecimalSI: integer mantissa with the largest exponent that is a multiple of 3 (``n u m "" k M G T P E``);
* BinarySI: integers with |v| >= 1024 divided by 1024 while divisible (``Ki`` ... ``Ei``), anything
  else printed as DecimalSI;
* DecimalExponent: like DecimalSI but written ``<mantissa>e<exp>``.
The multiply helpers follow katalyst's ``native.MultiplyResourceQuantity``: an IEEE-754 double
product truncated toward zero, with the ``y == 0`` / ``y == 1`` / zero-value special cases.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

DECIMAL_SI = "DecimalSI"
BINARY_SI = "BinarySI"
DECIMAL_EXPONENT = "DecimalExponent"

_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_BY_EXPONENT = {exp: suffix for suffix, exp in _DECIMAL_SUFFIXES.items()}
_BINARY_BY_EXPONENT = {exp: suffix for suffix, exp in _BINARY_SUFFIXES.items()}
_NUMBER = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)$")
_EXPONENT = re.compile(r"^[eE]([+-]?[0-9]+)$")
_NANO = Fraction(1, 10 ** 9)


def _round_away_to_nano(value):
    scaled = value / _NANO
    if scaled.denominator == 1:
        return value
    rounded = math.ceil(scaled) if scaled > 0 else math.floor(scaled)
    return Fraction(rounded) * _NANO


class Quantity:
    """An exact quantity with the format apimachinery would print it in."""

    __slots__ = ("amount", "format")

    def __init__(self, amount, fmt=DECIMAL_SI):
        if fmt not in (DECIMAL_SI, BINARY_SI, DECIMAL_EXPONENT):
            raise ValueError("unknown quantity format %r" % fmt)
        self.amount = _round_away_to_nano(Fraction(amount))
        self.format = fmt

    # -- numbers -------------------------------------------------------------------------------
    def value(self):
        """Integer base units, rounded up (apimachinery ``Value()``)."""
        return math.ceil(self.amount)

    def milli_value(self):
        """Integer milli units, rounded up (apimachinery ``MilliValue()``)."""
        return math.ceil(self.amount * 1000)

    def is_zero(self):
        return self.amount == 0

    def __add__(self, other):
        return Quantity(self.amount + _amount(other), self.format)

    def __sub__(self, other):
        return Quantity(self.amount - _amount(other), self.format)

    def __neg__(self):
        return Quantity(-self.amount, self.format)

    def __eq__(self, other):
        if isinstance(other, Quantity):
            return self.amount == other.amount
        return NotImplemented

    def __lt__(self, other):
        return self.amount < _amount(other)

    def __le__(self, other):
        return self.amount <= _amount(other)

    def __gt__(self, other):
        return self.amount > _amount(other)

    def __ge__(self, other):
        return self.amount >= _amount(other)

    def __hash__(self):
        return hash(self.amount)

    def __repr__(self):
        return "Quantity(%r, %s)" % (str(self), self.format)

    # -- canonical text ------------------------------------------------------------------------
    def __str__(self):
        if self.amount == 0:
            return "0"
        if self.format == BINARY_SI and abs(self.amount) >= 1024 and self.amount.denominator == 1:
            return _binary_string(int(self.amount))
        mantissa, exponent = _decimal_mantissa(self.amount)
        if self.format == DECIMAL_EXPONENT:
            return "%de%d" % (mantissa, exponent) if exponent else str(mantissa)
        return "%d%s" % (mantissa, _DECIMAL_BY_EXPONENT[exponent])


def _amount(other):
    if isinstance(other, Quantity):
        return other.amount
    return Fraction(other)


def _decimal_mantissa(amount):
    """(integer mantissa, exponent multiple of 3 in [-9, 18]) with the largest such exponent."""
    exponent = -9
    mantissa = amount * 10 ** 9
    # mantissa is an integer here (amounts are whole nanos)
    mantissa = int(mantissa)
    while exponent < 18 and mantissa % 1000 == 0:
        mantissa //= 1000
        exponent += 3
    return mantissa, exponent


def _binary_string(value):
    exponent = 0
    while exponent < 60 and value % 1024 == 0:
        value //= 1024
        exponent += 10
    return "%d%s" % (value, _BINARY_BY_EXPONENT.get(exponent, ""))


def parse_quantity(text):
    """Parse a Kubernetes quantity string (``"1.5Gi"``, ``"250m"``, ``"1e3"``); ValueError on junk."""
    if not isinstance(text, str):
        raise ValueError("quantity must be a string, got %s %r" % (type(text).__name__, text))
    match = _NUMBER.match(text)
    if not text or match is None:
        raise ValueError("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': %r" % text)
    sign, whole, frac, suffix = match.groups()
    if not whole and not frac:
        raise ValueError("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': %r" % text)
    digits = Fraction(int(whole or "0"))
    if frac:
        digits += Fraction(int(frac), 10 ** len(frac))
    if sign == "-":
        digits = -digits
    if suffix in _BINARY_SUFFIXES:
        return Quantity(digits * (2 ** _BINARY_SUFFIXES[suffix]), BINARY_SI)
    if suffix in _DECIMAL_SUFFIXES:
        return Quantity(digits * Fraction(10) ** _DECIMAL_SUFFIXES[suffix], DECIMAL_SI)
    exponent = _EXPONENT.match(suffix)
    if exponent:
        power = int(exponent.group(1))
        if abs(power) > 1000:
            raise ValueError("quantity exponent out of range: %r" % text)
        return Quantity(digits * Fraction(10) ** power, DECIMAL_EXPONENT)
    raise ValueError("unable to parse quantity's suffix %r in %r" % (suffix, text))


def new_quantity(value, fmt=DECIMAL_SI):
    """apimachinery ``NewQuantity(value, format)``: an integer number of base units."""
    return Quantity(int(value), fmt)


def new_milli_quantity(milli_value, fmt=DECIMAL_SI):
    """apimachinery ``NewMilliQuantity(value, format)``: an integer number of milli units."""
    return Quantity(Fraction(int(milli_value), 1000), fmt)


def _truncate(product):
    """Go ``int64(float64)``: truncation toward zero."""
    return int(product)


def _multiply(quantity, ratio, units, build):
    """``units()`` of ``quantity`` times ``ratio`` (double), truncated, as ``build(units, format)``; 0 and 1 as katalyst treats them."""
    if ratio == 0:
        return build(0, quantity.format)
    if ratio == 1 or units() == 0:
        return quantity
    return build(_truncate(float(units()) * float(ratio)), quantity.format)


def multiply_milli_quantity(quantity, ratio):
    """katalyst ``MultiplyMilliQuantity``: milli units times ``ratio`` (double), truncated."""
    return _multiply(quantity, ratio, quantity.milli_value, new_milli_quantity)


def multiply_quantity(quantity, ratio):
    """katalyst ``MultiplyQuantity``: base units (``Value()``, rounded up) times ``ratio``, truncated."""
    return _multiply(quantity, ratio, quantity.value, new_quantity)


def multiply_resource_quantity(resource_name, quantity, ratio):
    """CPU is multiplied in milli units, every other resource in base units."""
    if resource_name == "cpu":
        return multiply_milli_quantity(quantity, ratio)
    return multiply_quantity(quantity, ratio)
