from core.workspace import new_stamped_dir


def test_new_stamped_dir_never_reuses_a_taken_name(tmp_path):
    first = new_stamped_dir(tmp_path / "runs", "20261121-120000")
    (first / "config.json").write_text("{}")
    second = new_stamped_dir(tmp_path / "runs", "20261121-120000")
    third = new_stamped_dir(tmp_path / "runs", "20261121-120000")

    assert [p.name for p in (first, second, third)] == ["20261121-120000", "20261121-120000-2", "20261121-120000-3"]
    assert all(p.is_dir() for p in (first, second, third))
    assert (first / "config.json").read_text() == "{}"  # the earlier run is left untouched
