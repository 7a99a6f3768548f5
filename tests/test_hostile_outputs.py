"""Outputs under hostile conditions: two runs on one output, a full disk, a read-only folder, `--overwrite` onto
something research did not write. Nothing is lost, the second run is refused in one line, and after a full disk
the same command goes on where it stopped.

Full and read-only disks are real tmpfs mounts (root only); those tests skip where mounting is not allowed.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

from research import io
from research.cli import main
from research.data import pack
from research.errors import UserError
from research.features import dump, read
from research.features.dump import partial_path
from tests.holding import held, progress, wait_for_flush
from tests.test_features_dump import make_folder, write_vgg

HELD = "fox/05.png"  # record 25 of 30: rows 0..23 are flushed before the loader reaches it
HELD_ROWS = 24


def features_args(weights, data, out) -> list:
    return ["features", "--weights", str(weights), "--data", str(data), "--tap", "block3_pool", "--pool", "max",
            "--image-size", "32", "--batch-size", "4", "--buffer-size", "8", "--out", str(out)]


def one_line(err: str) -> bool:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    return len(errors) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return write_vgg(root / "vgg.h5"), make_folder(root / "animals", bad=False)


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory):
    """An uninterrupted dump of the same command, to compare against."""
    weights, data = inputs
    return dump(weights, data, ["block3_pool"], tmp_path_factory.mktemp("clean") / "clean.h5", pool="max",
                image_size=32, batch_size=4, buffer_size=8).out


@contextlib.contextmanager
def tmpfs(path, size: str, readonly: bool = False):
    """A real tmpfs of `size` at `path`, unmounted afterwards; skips the test where mounting is not allowed."""
    path.mkdir()
    options = f"size={size}" + (",ro" if readonly else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def wait_for_rows(proc, partial, rows: int, timeout: float = 90.0) -> None:
    """Until the held run has flushed everything before the held image."""
    wait_for_flush(proc, partial, timeout)
    deadline = time.monotonic() + timeout
    while progress(partial) < rows:
        assert time.monotonic() < deadline and proc.poll() is None, "the held run stopped flushing"
        time.sleep(0.05)


def same_features(path, reference) -> bool:
    return read(path)["features"]["block3_pool"].tobytes() == read(reference)["features"]["block3_pool"].tobytes()


def test_second_run_on_the_same_output_is_refused_and_touches_nothing(inputs, clean, tmp_path, capsys):
    weights, data = inputs
    out, release = tmp_path / "f.h5", tmp_path / "release"
    first = held(HELD, release, features_args(weights, data, out))
    try:
        wait_for_rows(first, partial_path(out), HELD_ROWS)
        before = partial_path(out).read_bytes()
        assert main(features_args(weights, data, out)) == 2  # a second process, while the first holds the lock
        err = capsys.readouterr().err
        assert one_line(err) and "being written by another run (pid" in err
        assert partial_path(out).read_bytes() == before and not out.exists()
        release.touch()
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert same_features(out, clean) and not io.lock_path(out).exists()


def test_full_disk_stops_cleanly_and_the_same_command_resumes(inputs, clean, tmp_path, capsys):
    weights, data = inputs
    with tmpfs(tmp_path / "disk", "8m") as disk:
        out, release = disk / "f.h5", tmp_path / "release"
        proc = held(HELD, release, features_args(weights, data, out))
        try:
            wait_for_rows(proc, partial_path(out), HELD_ROWS)
            ballast = disk / "ballast"
            ballast.write_bytes(bytes(io.free_bytes(disk) - (256 << 10)))  # someone else fills the disk
            release.touch()
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 2 and one_line(stderr) and "the disk is full" in stderr, stderr
        assert progress(partial_path(out)) == HELD_ROWS and not out.exists()

        ballast.unlink()  # space freed: the same command goes on from row 24
        assert main(features_args(weights, data, out)) == 0
        assert f"resumed at row {HELD_ROWS}" in capsys.readouterr().out
        assert same_features(out, clean) and not partial_path(out).exists()


def test_damaged_partial_is_started_again(inputs, clean, tmp_path, caplog):
    """A partial whose bytes were cut short (a write that failed half-way) is not resumed from, but redone."""
    weights, data = inputs
    out = tmp_path / "f.h5"
    partial_path(out).write_bytes(clean.read_bytes()[: clean.stat().st_size * 2 // 3])
    result = dump(weights, data, ["block3_pool"], out, pool="max", image_size=32, batch_size=4, buffer_size=8)
    assert result.resumed_from == 0 and same_features(out, clean)
    assert "damaged" in caplog.text and "starting again" in caplog.text


def test_read_only_folder_is_one_line_for_every_writer(inputs, clean, tmp_path, capsys):
    weights, data = inputs
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        for args in (["convert", weights, ro / "ckpt"], ["pack", data, ro / "p.h5", "--image-size", "16"],
                     ["probe", clean, "--out", ro / "probe.json"], features_args(weights, data, ro / "f.h5"),
                     ["augment-preview", data, "--out", ro / "grid.png", "--n", "2", "--k", "1",
                      "--image-size", "16"]):
            assert main([str(a) for a in args]) == 2, args
            err = capsys.readouterr().err
            assert one_line(err) and "read-only; write somewhere else" in err, err
        assert not any(ro.iterdir())


def test_full_disk_is_one_line_for_pack_convert_and_probe(inputs, clean, tmp_path, capsys):
    weights, data = inputs
    with tmpfs(tmp_path / "small", "256k") as small:
        for args in (["convert", weights, small / "ckpt"], ["pack", data, small / "p.h5", "--image-size", "64"]):
            assert main([str(a) for a in args]) == 2, args
            err = capsys.readouterr().err
            assert one_line(err) and "the disk is full" in err, err
        (small / "ballast").write_bytes(bytes(io.free_bytes(small) - 4096))
        assert main(["probe", str(clean), "--out", str(small / "probe.json")]) == 2
        err = capsys.readouterr().err
        assert one_line(err) and "the disk is full" in err, err
        assert sorted(p.name for p in small.iterdir()) == ["ballast"]  # no temporary file left behind


def test_overwrite_replaces_only_what_research_wrote(inputs, tmp_path, capsys):
    weights, _ = inputs
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    assert main(["convert", str(weights), str(foreign), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "is not a converted checkpoint written by research" in err
    assert (foreign / "chapter1.tex").read_text() == "years of work"

    workdir = tmp_path / "run"  # a fine-tuning workdir is research's, but not a converted checkpoint
    workdir.mkdir()
    (workdir / "research.json").write_text(json.dumps({"finetune": {}}))
    assert main(["convert", str(weights), str(workdir), "--overwrite"]) == 2
    assert (workdir / "research.json").exists()
    capsys.readouterr()

    ckpt = tmp_path / "ckpt"
    assert main(["convert", str(weights), str(ckpt)]) == 0
    assert main(["convert", str(weights), str(ckpt), "--overwrite"]) == 0  # its own output: replaced
    assert sorted(p.name for p in ckpt.iterdir()) == ["research.json", "variables"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "run", "thesis"]


def test_overwrite_refuses_foreign_feature_and_pack_files(inputs, tmp_path):
    weights, data = inputs
    other = tmp_path / "other.h5"
    other.write_bytes(b"someone else's data")
    for write in (lambda: dump(weights, data, ["block3_pool"], other, image_size=32, overwrite=True),
                  lambda: pack.write(data, other, 16, overwrite=True)):
        with pytest.raises(UserError, match="not a (features file|pack) written by research"):
            write()
        assert other.read_bytes() == b"someone else's data"


def test_lock_is_exclusive_and_a_stale_one_is_taken(tmp_path):
    """flock locks belong to an open file, so a second `lock` refuses even in the same process; a lock file
    whose holder died (here: written by hand, as a SIGKILL leaves it) is not locked, so it is taken over."""
    out = tmp_path / "x.h5"
    with io.lock(out):
        with pytest.raises(UserError, match=f"another run \\(pid {os.getpid()} on "):
            with io.lock(out):
                pass
    assert not io.lock_path(out).exists()
    io.lock_path(out).write_text("pid 999999 on elsewhere\n")
    with io.lock(out):
        assert f"pid {os.getpid()} " in io.lock_path(out).read_text()
    assert not io.lock_path(out).exists() and not out.exists()


def test_hdf5_write_that_hits_a_full_disk_ends_in_one_line(tmp_path):
    """The path the free-space checks guard against (another writer fills the disk mid-write): HDF5 fails to
    write, then to close; the file is emptied so it closes (sparse: HDF5 writes its metadata at the old end),
    and the process ends with one line, not a crash."""
    script = ("import sys, numpy as np\nfrom research import io\nfrom research.cli import _fail\n"
              "from research.errors import UserError\ntry:\n"
              "    with io.hdf5_file(sys.argv[1], 'w') as f:\n"
              "        f.create_dataset('x', data=np.ones((1 << 20,)))\n"
              "except UserError as e:\n    sys.exit(_fail(e))\n")
    with tmpfs(tmp_path / "small", "256k") as small:
        done = subprocess.run([sys.executable, "-c", script, str(small / "x.h5")], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and one_line(done.stderr) and "the disk is full" in done.stderr, done.stderr
        assert (small / "x.h5").stat().st_blocks * 512 < 64 << 10  # emptied: a few pages of metadata remain
