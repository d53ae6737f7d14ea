"""The shipped lesson models: verified by sha256, loaded by default, never written to; the caches
beside them rebuild what is corrupt or belongs to another model."""
import json
import shutil

import pytest
import torch

from qlearn import shipped as S
from qlearn.lessons import lesson_model as P


def _copy_shipped(tmp_path, monkeypatch):
    """A private copy of qlearn/shipped that the test may damage; the lessons read it from now on."""
    copy = tmp_path / "shipped"
    shutil.copytree(S.SHIPPED_DIR, copy)
    monkeypatch.setenv("QLEARN_SHIPPED_DIR", str(copy))
    monkeypatch.setenv("QLEARN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "_LESSONS", {})
    return copy


def test_manifest_lists_every_shipped_file_with_its_hash():
    m = S.manifest()
    assert m["format"] == S.FORMAT and m["made_by"] == "python -m qlearn ship-models"
    on_disk = {p.relative_to(S.SHIPPED_DIR).as_posix() for p in S.SHIPPED_DIR.rglob("*")
               if p.is_file() and p.name != S.MANIFEST and "__pycache__" not in p.parts}
    assert on_disk == set(m["files"])
    for name in m["files"]:
        assert S.shipped_file(name) == S.SHIPPED_DIR / name
    assert S.shipped_file("not-shipped.pt") is None
    assert S.shipped_folder("pipeline") is not None


def test_shipped_file_refuses_paths_outside_the_folder():
    for bad in ("", "/etc/passwd", "../pyproject.toml", "a/../../x", 3):
        with pytest.raises(ValueError, match="name"):
            S.shipped_file(bad)


def test_a_damaged_shipped_file_is_an_error_not_other_weights(tmp_path, monkeypatch):
    copy = _copy_shipped(tmp_path, monkeypatch)
    ckpt = copy / f"{P.LessonConfig().key}.pt"
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(S.ShippedFileError, match="sha256"):
        P.lesson_model(progress=False)
    (copy / S.MANIFEST).write_text("{not json")
    with pytest.raises(S.ShippedFileError, match="unreadable"):
        S.shipped_file("x.pt")


def test_default_lesson_is_the_shipped_one_and_results_never_go_into_the_package(tmp_path, monkeypatch):
    copy = _copy_shipped(tmp_path, monkeypatch)
    lesson = P.lesson_model(progress=False)
    assert lesson.shipped and lesson.path == copy / f"{P.LessonConfig().key}.pt"
    before = sorted(p.name for p in copy.iterdir())
    shipped_result = P.cached_results(lesson, "weight-bits-2-8-v1", lambda: pytest.fail("must read the shipped file"))
    assert set(shipped_result) == {"per-tensor", "per-channel"}
    new = P.cached_results(lesson, "claims-test-v1", lambda: {"a": [1.0, 2.0]})
    assert new == {"a": [1.0, 2.0]}
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing written into the shipped folder
    assert json.loads((tmp_path / "cache" / f"{lesson.path.stem}.claims-test-v1.json").read_text()) == new


def test_corrupt_or_foreign_cached_lesson_is_retrained(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P, "_LESSONS", {})
    cfg = P.LessonConfig(width=0.25, input_size=8, epochs=1, batch_size=128)
    folder = tmp_path / "c"
    a = P.lesson_model(cfg, directory=folder, progress=False)
    good = {k: v.clone() for k, v in a.model.state_dict().items()}
    (folder / f"{a.path.stem}.old-result-v1.json").write_text("{}")
    a.path.write_bytes(b"not a checkpoint")  # corrupt
    P._LESSONS.clear()
    b = P.lesson_model(cfg, directory=folder, progress=False)
    assert "unreadable" in capsys.readouterr().err
    assert all(torch.equal(good[k], b.model.state_dict()[k]) for k in good)  # the same seed, trained again
    assert not (folder / f"{a.path.stem}.old-result-v1.json").exists()  # results of the bad file are gone
    # another architecture's checkpoint under this key
    other = P.LessonConfig(arch="mobilenet_v2", width=0.25, input_size=8, epochs=1, batch_size=128)
    c = P.lesson_model(other, directory=tmp_path / "o", progress=False)
    shutil.copy(c.path, b.path)
    P._LESSONS.clear()
    d = P.lesson_model(cfg, directory=folder, progress=False)
    assert "is not" in capsys.readouterr().err
    assert type(d.model).__name__ == type(a.model).__name__


def test_retrain_replaces_the_default_lesson_in_this_process(tmp_path, monkeypatch):
    _copy_shipped(tmp_path, monkeypatch)
    cfg = P.LessonConfig(width=0.25, input_size=8, epochs=1, batch_size=128)
    with pytest.raises(TypeError, match="retrain"):
        P.lesson_model(cfg, retrain="yes")
    fresh = P.lesson_model(cfg, retrain=True, progress=False)  # this config is not shipped anyway
    assert not fresh.shipped and fresh.path == tmp_path / "cache" / f"{cfg.key}.pt"
    assert P.lesson_model(cfg) is fresh
