"""models/lora_names.py: the one rule for which files an export writes and which of them serves a domain."""

from __future__ import annotations

import pytest

from pm_lightning.core.errors import BadInput
from pm_lightning.data.domains import UNSEEN_DOMAIN
from pm_lightning.models.lora_names import export_names, lora_file_for, served_name

KNOWN = ["lego", "cake"]


def test_an_export_writes_every_domain_and_unseen_or_one_plain_file():
    assert export_names("masked", KNOWN) == {"lego": 0, "cake": 1, "unseen": UNSEEN_DOMAIN}
    assert export_names("asymmetric", KNOWN) == {"lego": 0, "cake": 1, "unseen": UNSEEN_DOMAIN}
    assert export_names("lora", KNOWN) == {"lora": 0}


@pytest.mark.parametrize("kind", ["masked", "lora"])
def test_every_domain_is_served_by_a_file_the_export_writes(kind):
    names = export_names(kind, KNOWN)
    for domain in [*KNOWN, "origami", None]:
        expected = "lora" if kind == "lora" else domain if domain in KNOWN else "unseen"
        assert served_name(domain, names) == expected


def test_the_file_of_a_domain_falls_back_to_unseen_then_lora(tmp_path):
    for name in ("lego", "unseen", "lego.kohya"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    assert lora_file_for(tmp_path, "lego") == tmp_path / "lego.safetensors"
    assert lora_file_for(tmp_path, "origami") == tmp_path / "unseen.safetensors"
    assert lora_file_for(tmp_path, "lego", fmt="kohya") == tmp_path / "lego.kohya.safetensors"
    (tmp_path / "unseen.safetensors").unlink()
    (tmp_path / "lora.safetensors").write_bytes(b"")
    assert lora_file_for(tmp_path, "origami") == tmp_path / "lora.safetensors"


def test_a_folder_without_a_file_for_the_domain_names_the_folder_and_the_files_tried(tmp_path):
    (tmp_path / "lego.safetensors").write_bytes(b"")
    (tmp_path / "unseen.safetensors").mkdir()  # a folder of that name is no file
    with pytest.raises(BadInput, match=r"holds no LoRA file for domain 'x' \(tried x.safetensors, unseen.safetensors, "
                       r"lora.safetensors\)") as err:  # fmt: skip
        lora_file_for(tmp_path, "x")
    assert str(tmp_path) in str(err.value)
