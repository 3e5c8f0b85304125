"""The one name rule and the one reference parser, shared by the SDK and the server."""

from __future__ import annotations

import pytest

from nimbus.errors import InvalidInput
from nimbus.names import Reference, parse_reference, validate_alias, validate_name


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
