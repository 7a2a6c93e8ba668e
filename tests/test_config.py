import pytest

from namegen.config import SIZES, Config, load_config
from namegen.errors import UserError

TABLE = {  # the notebook's table: layers, embd, hidden, epochs, lr, batch, block, dropout, optimizer
    "small": (1, 64, 128, 35, 1e-3, 128, 12, 0.0, "adam"),
    "medium": (2, 96, 256, 40, 5e-4, 128, 16, 0.1, "adam"),
    "large": (3, 128, 512, 60, 3e-4, 256, 20, 0.2, "adamw"),
}

# Recipe columns the configs change on purpose (issues 4, 11 and 16, to reach the quality targets; the searches
# in reports/2026-11-25, 2026-12-02 and 2026-12-06, and docs/comparing.md, say why). Every other column must stay
# the notebook's; the architecture never changes.
RECIPE_CHANGES = {
    "small": {"lr": 3e-3, "dropout": 0.05, "max_epochs": 80, "batch_size": 64, "optimizer": "adamw"},
    "medium": {"lr": 1.273e-3, "dropout": 0.02389, "max_epochs": 60, "batch_size": 64, "optimizer": "adamw"},
    "large": {"lr": 9.06e-4, "dropout": 0.0, "max_epochs": 30, "batch_size": 64},
}
COLUMNS = ("n_layer", "n_embd", "n_hidden", "max_epochs", "lr", "batch_size", "block_size", "dropout", "optimizer")


@pytest.mark.parametrize("size", SIZES)
def test_configs_carry_the_notebook_table(size):
    c = load_config(size)
    want = dict(zip(COLUMNS, TABLE[size])) | RECIPE_CHANGES[size]
    assert {k: getattr(c, k) for k in COLUMNS} == want
    assert c.layer_norm == (size == "large")


def test_unknown_key_is_an_error(tmp_path):
    raw = load_config("small").to_dict() | {"n_heads": 4}
    with pytest.raises(UserError, match="unknown key.*n_heads"):
        Config.from_dict(raw)


def test_wrong_type_and_missing_keys_are_errors(tmp_path):
    raw = load_config("small").to_dict()
    with pytest.raises(UserError, match="lr must be of type float"):
        Config.from_dict(raw | {"lr": "fast"})
    raw.pop("n_hidden")
    with pytest.raises(UserError, match="missing key.*n_hidden"):
        Config.from_dict(raw)


def test_overrides_replace_only_given_values():
    c = load_config("medium").replace(max_epochs=2, lr=None)
    assert c.max_epochs == 2 and c.lr == load_config("medium").lr == 1.273e-3


def test_unknown_size_is_a_clear_error():
    with pytest.raises(UserError, match="unknown size 'tiny'"):
        load_config("tiny")
