"""Output folders: a command replaces only an empty folder or its own output, atomically; anything else is refused
with nothing deleted (``taxi_fares_mlops.outputs``, used by ``mlops build`` and ``mlops serving package``)."""
import json

import pytest

from taxi_fares_mlops.outputs import MARKER, ForeignOutputError, building_folder, check_replaceable, swap_in


def _never(folder):
    return False


def test_an_absent_empty_or_marked_folder_may_be_replaced(tmp_path):
    check_replaceable(tmp_path / "new", _never, "x")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", _never, "x")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / MARKER).write_text("")
    (tmp_path / "ours" / "a.whl").write_text("")
    check_replaceable(tmp_path / "ours", _never, "x")


@pytest.mark.parametrize("kind", ["foreign files", "a file", "a symlink"])
def test_anything_else_is_refused_by_name_and_left_as_it_was(tmp_path, kind):
    home = tmp_path / "home"
    home.mkdir()
    for name in ("thesis.tex", "photos", "notes.txt", "a", "b", "c"):
        (home / name).write_text("mine")
    target = {"foreign files": home, "a file": home / "notes.txt", "a symlink": tmp_path / "link"}[kind]
    if kind == "a symlink":
        target.symlink_to(home)
    before = sorted(p.name for p in home.iterdir())
    with pytest.raises(ForeignOutputError) as refused:
        check_replaceable(target, _never, "the wheels")
    assert str(target) in str(refused.value) and "nothing was deleted" in str(refused.value) or \
        "not a folder this command made" in str(refused.value)
    if kind == "foreign files":
        assert "a, b, c, notes.txt, photos and 1 more" in str(refused.value)
    assert sorted(p.name for p in home.iterdir()) == before


def test_a_folder_the_caller_recognises_as_its_own_may_be_replaced(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": 1}))
    check_replaceable(bundle, lambda f: json.loads((f / "manifest.json").read_text())["format"] == 1, "a bundle")


def test_the_swap_leaves_the_old_folder_until_the_new_one_is_whole(tmp_path):
    destination = tmp_path / "dist"
    destination.mkdir()
    (destination / "old.whl").write_text("old")
    building = building_folder(destination)
    assert building.parent == destination.parent and building.name.startswith(".dist.building-")
    (building / "new.whl").write_text("new")
    swap_in(building, destination)
    assert sorted(p.name for p in destination.iterdir()) == ["new.whl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]
