"""The one name rule and the one reference parser, shared by the SDK and the server."""

from __future__ import annotations

import pytest

from nimbus.errors import InvalidInput
from nimbus.names import (
    Reference,
    parse_int,
    parse_reference,
    validate_alias,
    validate_name,
    version_number,
    whole_number,
)


@pytest.mark.parametrize("name", ["a", "digits", "my.data_set-2", "0abc", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Digits", "-a", ".a", "a b", "a/b", "a..b", "a" * 64, 3])
def test_invalid_names_say_what_and_how(name: object) -> None:
    with pytest.raises(InvalidInput, match=r"invalid dataset name .*: use 1-63 characters"):
        validate_name(name, "dataset name")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "aliases", "want"),
    [
        ("digits", False, Reference("digits")),
        ("digits:latest", False, Reference("digits", "latest")),
        ("digits:3", False, Reference("digits", 3)),
        ("digits:003", True, Reference("digits", 3)),
        ("digits@prod", True, Reference("digits", alias="prod")),
        ("my.model-2@canary_1", True, Reference("my.model-2", alias="canary_1")),
    ],
)
def test_references_parse(text: str, aliases: bool, want: Reference) -> None:
    assert parse_reference(text, "model", aliases=aliases) == want


@pytest.mark.parametrize(
    ("text", "aliases", "message"),
    [
        (
            "digits:0",
            False,
            "invalid dataset reference 'digits:0': the version is a positive integer or 'latest';"
            " use NAME or NAME:VERSION",
        ),
        ("digits:x", False, "invalid dataset reference 'digits:x': the version is"),
        ("digits:", False, "invalid dataset reference 'digits:': the version is"),
        ("a:1:2", False, "invalid dataset reference 'a:1:2'"),
        ("d:1234567890", False, "invalid dataset reference"),
        ("digits:-1", True, "use NAME, NAME:VERSION or NAME@ALIAS"),
        ("digits@prod", False, "invalid dataset name 'digits@prod'"),
        (":1", False, "invalid dataset name ''"),
        ("Digits", True, "invalid dataset name 'Digits'"),
        ("digits@", True, "invalid alias ''"),
        ("digits@latest", True, "an alias is neither a number nor 'latest'"),
        ("digits@12", True, "an alias is neither a number nor 'latest'"),
    ],
)
def test_bad_references_are_invalid_input_with_one_message(
    text: str, aliases: bool, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_reference(text, "dataset", aliases=aliases)
    assert message in str(caught.value)


def test_a_non_string_reference_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="invalid model reference 7"):
        parse_reference(7, "model", aliases=True)  # type: ignore[arg-type]


def test_aliases_are_names_but_not_versions() -> None:
    assert validate_alias("production") == "production"
    for bad in ("7", "latest", "Prod", ""):
        with pytest.raises(InvalidInput):
            validate_alias(bad)


def test_the_sdk_and_the_server_refuse_with_the_same_message() -> None:
    from nimbus.client import DatasetRef, ModelRef
    from nimbus.services.jobs import split_dataset_ref
    from nimbus.services.models import parse_model_ref

    for sdk, server, text in [
        (DatasetRef.parse, split_dataset_ref, "digits:x"),
        (ModelRef.parse, parse_model_ref, "m:one"),
        (ModelRef.parse, parse_model_ref, "m@7"),
    ]:
        with pytest.raises(InvalidInput) as on_client:
            sdk(text)
        with pytest.raises(InvalidInput) as on_server:
            server(text)
        assert str(on_client.value) == str(on_server.value)


@pytest.mark.parametrize(
    ("text", "minimum", "maximum", "want"),
    [
        ("0", 0, 10, 0),
        ("007", 0, 10, 7),
        ("10", 0, 10, 10),
        ("11", 0, 10, None),
        ("-3", -5, 5, -3),
        ("-3", 0, 5, None),  # a sign only where negatives are allowed
        ("9223372036854775807", 0, 2**63 - 1, 2**63 - 1),
        ("9223372036854775808", 0, 2**63 - 1, None),
        ("9" * 5000, 0, 2**63 - 1, None),  # refused before int() sees it
        ("\u00b2", 0, 10, None),  # '²': str.isdigit() accepts it, int() refuses it
        ("\u0661", 0, 10, None),  # Arabic-Indic one: int() reads 1
        ("\uff11", 0, 10, None),  # fullwidth one: int() reads 1 too
        ("1\n", 0, 10, None),
        (" 1", 0, 10, None),
        ("+1", 0, 10, None),
        ("1_0", 0, 100, None),
        ("", 0, 10, None),
        ("-", -5, 5, None),
    ],
)
def test_whole_numbers_are_ascii_digits_within_bounds(
    text: str, minimum: int, maximum: int, want: int | None
) -> None:
    assert whole_number(text, minimum=minimum, maximum=maximum) == want


def test_parse_int_names_the_parameter_and_the_range() -> None:
    assert parse_int("12", "query parameter 'after'") == 12
    with pytest.raises(InvalidInput) as refused:
        parse_int("\u00b2", "Last-Event-ID header", maximum=99)
    assert refused.value.message == "invalid Last-Event-ID header '²': a whole number from 0 to 99"
    assert refused.value.details == {"field": "Last-Event-ID header"}


@pytest.mark.parametrize("text", ["1", "999999999", "001"])
def test_version_numbers(text: str) -> None:
    assert version_number(text) == int(text)


@pytest.mark.parametrize("text", ["0", "1000000000", "1\n", "\u00b2", "\u0661", "-1", "latest"])
def test_not_version_numbers(text: str) -> None:
    assert version_number(text) is None


def test_an_alias_of_digits_in_another_script_is_a_name_not_a_version() -> None:
    with pytest.raises(InvalidInput):  # not a name either: names are ASCII
        validate_alias("\u0661")
    with pytest.raises(InvalidInput, match="neither a number"):
        validate_alias("1" * 30)
