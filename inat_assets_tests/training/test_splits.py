from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from inat_assets_tests.training.conftest import build, index_rows
from inat_assets_tests.training.world import World

MINIMUMS = {"splits": {"min_val_per_class": 2, "min_test_per_class": 2}}


def _splits_by(rows: list[dict], key: str | tuple[str, ...]) -> dict[object, set[str]]:
    seen: dict[object, set[str]] = defaultdict(set)
    for r in rows:
        seen[tuple(r[k] for k in key) if isinstance(key, tuple) else r[key]].add(r["split"])
    return seen


def test_no_observation_and_no_observer_taxon_group_straddles_splits(world: World, tmp_path: Path) -> None:
    rows = index_rows(build(world, tmp_path / "ds", MINIMUMS))
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _splits_by(rows, "observation_id").values())
    assert all(len(s) == 1 for s in _splits_by(rows, ("label", "observer_login")).values())


def test_observation_grouping_keeps_observations_whole(world: World, tmp_path: Path) -> None:
    rows = index_rows(build(world, tmp_path / "ds", {"splits": {"group_by": "observation"}}))
    assert all(len(s) == 1 for s in _splits_by(rows, "observation_id").values())
    assert len({r["split_group"] for r in rows}) == len({r["observation_id"] for r in rows})


def test_new_groups_follow_the_documented_md5_rule(world: World, tmp_path: Path) -> None:
    rows = index_rows(build(world, tmp_path / "ds", {"splits": {"seed": 42, "train": 0.5, "val": 0.25, "test": 0.25}}))
    for r in rows:
        u = int(hashlib.md5(f"42:{r['split_group']}".encode()).hexdigest()[:15], 16) / 16**15
        assert r["split"] == ("test" if u >= 0.75 else "val" if u >= 0.5 else "train")
    assert all(r["split_group"] == f"{r['label']}\x1fuser:{r['observer_login']}" for r in rows)


def test_splits_are_deterministic(world: World, tmp_path: Path) -> None:
    a = index_rows(build(world, tmp_path / "a", MINIMUMS))
    b = index_rows(build(world, tmp_path / "b", MINIMUMS))
    assert [(r["photo_id"], r["split"]) for r in a] == [(r["photo_id"], r["split"]) for r in b]


def test_adding_a_batch_never_moves_an_existing_photo(world: World, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = build(world, out, MINIMUMS, batches=world.batches[:2])
    before = {r["photo_id"]: r["split"] for r in index_rows(first)}
    second = build(world, out, MINIMUMS)
    after = {r["photo_id"]: r["split"] for r in index_rows(second)}
    assert second.rows > first.rows and second.reused_split_groups > 0
    assert {pid: after[pid] for pid in before} == before


def test_changed_split_settings_reassign_from_scratch(world: World, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    build(world, out)
    assert build(world, out).reused_split_groups > 0
    assert build(world, out, {"splits": {"seed": 7}}).reused_split_groups == 0


def test_per_class_minimums_move_groups_out_of_train(world: World, tmp_path: Path) -> None:
    result = build(world, tmp_path / "ds", {"splits": {"min_val_per_class": 1, "min_test_per_class": 1}})
    rows = index_rows(result)
    groups = Counter(r["label"] for r in {(r["label"], r["split_group"]): r for r in rows}.values())
    per_split = Counter((r["label"], r["split"]) for r in rows)
    for label, n in groups.items():
        assert per_split[(label, "train")] > 0
        if n >= 3:  # room for one group in each split
            assert per_split[(label, "val")] >= 1 and per_split[(label, "test")] >= 1
    short_val = sum(1 for label in groups if per_split[(label, "val")] < 1)
    assert result.classes_short_of_minimum == {"val": short_val, "test": sum(1 for lab in groups if per_split[(lab, "test")] < 1)}


def test_train_mini_is_a_fixed_subset_of_train(world: World, tmp_path: Path) -> None:
    result = build(world, tmp_path / "ds", {"mini_per_class": 2})
    rows = index_rows(result)
    train = Counter(r["label"] for r in rows if r["split"] == "train")
    mini = Counter(r["label"] for r in rows if r["mini"])
    assert all(r["split"] == "train" for r in rows if r["mini"])
    assert mini == {label: min(2, n) for label, n in train.items()}
    assert result.splits["train_mini"] == sum(mini.values())
