"""Model references: one grammar, parsed without torch, refused with the reason."""

from __future__ import annotations

import pytest

from rstream.shared.errors import ConfigError, ModelError
from rstream.shared.models.refs import ModelRef, parse
from rstream.shared.names import MODEL_NAME


@pytest.mark.parametrize(("text", "expected"), [
    ("random:resnet18", ModelRef("random", arch="resnet18")),
    ("random:resnet50:classes=7:seed=3", ModelRef("random", arch="resnet50", classes=7, seed=3)),
    ("torchvision:resnet50:IMAGENET1K_V2",
     ModelRef("torchvision", arch="resnet50", weights="IMAGENET1K_V2")),
    ("torchvision:resnet18", ModelRef("torchvision", arch="resnet18", weights="DEFAULT")),
    ("digits", ModelRef("registry", name="digits")),
    ("  digits  ", ModelRef("registry", name="digits")),
    ("digits@20261127T031500123456Z-3f2a",
     ModelRef("registry", name="digits", version="20261127T031500123456Z-3f2a")),
])
def test_references_parse(text: str, expected: ModelRef) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "no model given"),
    ("random:vgg16", "not one of resnet18, resnet50"),
    ("random:resnet19", "architecture 'resnet19' is not one of resnet18, resnet50"),
    ("random:resnet18:classes=0", "at least 1"),
    ("random:resnet18:classes=10000000", "at most"),
    ("random:resnet18:depth=3", "classes=N or seed=S"),
    ("random:resnet18:seed=-1", "classes=N or seed=S"),
    ("random:resnet18:seed=1:seed=2", "each at most once"),
    ("torchvision:resnet50:IMAGENET1K_V9", "no weights 'IMAGENET1K_V9' for resnet50"),
    ("torchvision:resnet18:imagenet", "IMAGENET1K_V1, DEFAULT"),
    ("torchvision:vgg16", "not one of resnet18, resnet50"),
    ("resnet50", "torchvision:resnet50:IMAGENET1K_V2"),
    ("s3://bucket/model.pt", "not understood"),
    ("../escape", "invalid"),
    ("digits@latest", "not a version id"),
    ("digits@../../etc", "not a version id"),
    ("dig its", "whitespace"),
    ("digits\n", None),  # trailing whitespace is stripped, not an error
])
def test_bad_references_say_why(text: str, reason: str | None) -> None:
    if reason is None:
        assert parse(text) == ModelRef("registry", name="digits")
        return
    with pytest.raises(ModelError, match=reason):
        parse(text)


@pytest.mark.parametrize("text", [
    "random:resnet18", "random:resnet50:classes=7:seed=3", "torchvision:resnet50:IMAGENET1K_V2",
    "digits", "digits@20261127T031500123456Z-3f2a"])
def test_the_canonical_text_parses_back_to_the_same_reference(text: str) -> None:
    ref = parse(text)
    assert parse(str(ref)) == ref


def test_only_a_bare_name_follows_production() -> None:
    assert parse("digits").follows_production
    assert not parse("digits@20261127T031500123456Z-3f2a").follows_production
    assert not parse("random:resnet18").follows_production


@pytest.mark.parametrize("name", ["abc\n", "a/b", "-lead", "x" * 65, ""])
def test_model_names_are_matched_whole(name: str) -> None:
    with pytest.raises(ConfigError, match="model name"):
        MODEL_NAME.check(name)
