"""Settings files and draft-tree structure."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evospec import DecodeSettings, SettingsError
from evospec.runtime.tree import DraftTree


def test_settings_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[decode]\ndraft_tree = "chain"\ndraft_depth = 3\n')
    s = DecodeSettings.from_toml(path, draft_depth=7, seed=None)
    assert (s.draft_tree, s.draft_depth, s.tree_width, s.tree_budget) == ("chain", 7, 1, 7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[decode]\ndraft_depht = 3\n", "unknown [decode] keys ['draft_depht']"),
        ("[decode\n", "not valid TOML"),
        ('[decode]\nmax_new_tokens = "many"\n', "max_new_tokens must be int, got str 'many'"),
        ("[decode]\nmax_new_tokens = 3.5\n", "max_new_tokens must be int, got float 3.5"),
        ('[decode]\nuse_draft = "no"\n', "use_draft must be bool, got str 'no'"),
        ("decode = 3\n", "[decode] must be a table, got int 3"),
    ],
    ids=["unknown-key", "bad-toml", "str-for-int", "float-for-int", "str-for-bool", "not-a-table"],
)
def test_bad_settings_file(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DecodeSettings.from_toml(path)


def test_config_that_is_a_directory(tmp_path):
    with pytest.raises(SettingsError, match="is a directory, not a TOML file"):
        DecodeSettings.from_toml(tmp_path)


def test_settings_errors_name_the_field_not_the_whole_settings():
    with pytest.raises(SettingsError) as info:
        DecodeSettings(draft_depth=0)
    assert str(info.value) == "draft_depth must be >= 1 (got draft_depth = 0)"


def test_verifier_is_checked_and_resolved():
    with pytest.raises(SettingsError, match="verifier must be 'auto', 'python' or 'native' \\(got verifier = 'cpp'\\)"):
        DecodeSettings(verifier="cpp")
    sampled = DecodeSettings(temperature=1.0)
    assert sampled.sampled_verifier(native_drafter=True) == "native"  # auto: the library verifies what it drafts
    assert sampled.sampled_verifier(native_drafter=False) == "python"
    assert DecodeSettings(temperature=1.0, verifier="native").sampled_verifier(native_drafter=False) == "native"
    assert DecodeSettings(verifier="native").sampled_verifier(native_drafter=True) == "python"  # greedy: Python's


def test_bundled_default_config_loads():
    from pathlib import Path

    assert DecodeSettings.from_toml(Path(__file__).parents[1] / "configs" / "default.toml") == DecodeSettings()


@given(st.lists(st.integers(0, 1000), min_size=0, max_size=20))
def test_tree_mask_is_ancestor_closure(seeds):
    parents = [-1 if i == 0 else (s % (i + 1)) - 1 for i, s in enumerate(seeds)]  # parent index < i
    n = len(parents)
    tree = DraftTree(tokens=torch.zeros(n, dtype=torch.long), parents=torch.tensor(parents, dtype=torch.long),
                     depths=torch.ones(n, dtype=torch.long))
    mask = tree.attention_mask()
    for i in range(n):
        expected = {0, i + 1}
        p = parents[i]
        while p >= 0:
            expected.add(p + 1)
            p = parents[p]
        assert set(mask[i + 1].nonzero().flatten().tolist()) == expected
    kids = tree.children()
    assert sorted(c for row in kids for c in row) == list(range(n))
