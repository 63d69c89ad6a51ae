"""The generated demo's first load on an empty cache (a restarted hosted Lab): several sessions, threads of
one server, and several processes asking at once all get the demo, it is prepared once, and no temporary
folder is left. The 1-2 minute pretraining is replaced by a stand-in that logs that it ran; the dataset is
drawn for real, at two images a class."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import core.data.demo
from core.models import demo_backbone
from core.models.demo_backbone import BACKBONE_VERSION, INFO_FILE, PretrainReport, prepare_demo
from core.settings.source import Source

PER_CLASS = 2
HALFWAY = "Stand-in pretraining: halfway"
FINISHED = {f"scenes-v{BACKBONE_VERSION}", f"backbone-v{BACKBONE_VERSION}"}


def log_line(log: Path, line: str) -> None:
    with open(log, "a") as fh:  # appends of one short line do not interleave, across processes either
        fh.write(line + "\n")


def work_done(log: Path) -> list[str]:
    return sorted(log.read_text().splitlines()) if log.is_file() else []


def stand_in_pretrain(log: Path, hold: Callable[[], object] = lambda: time.sleep(1.0)):
    """Logs that it ran, reports halfway, holds (so that the others arrive meanwhile), then writes the
    info file that marks a finished backbone."""
    def pretrain(path, progress=None, seed=demo_backbone.SEED):
        log_line(log, "pretrain")
        if progress:
            progress(0.5, HALFWAY)
        hold()
        Path(path).mkdir(exist_ok=True)  # as saving a SavedModel does
        (Path(path) / INFO_FILE).write_text(json.dumps({"name": "stand-in", "seed": seed}))
        return PretrainReport(1.0, 1.0, 20, 40, 1.0, 8)
    return pretrain


def counting_scenes(log: Path):
    draw = core.data.demo.make_scenes_folder

    def make_scenes_folder(root, *args, **kwargs):
        log_line(log, "scenes")
        return draw(root, *args, **kwargs)
    return make_scenes_folder


def leftovers(cache: Path) -> list[str]:
    """What the demo folder holds besides the finished folders and the lock files beside them."""
    return sorted(p.name for p in (cache / "demo").iterdir() if p.name not in FINISHED and p.suffix != ".lock")


def images_in(source: str) -> int:
    return sum(1 for p in Path(Source.parse(source).value).rglob("*.jpg"))


def test_sessions_loading_the_demo_at_once_prepare_it_once_and_follow_its_progress(tmp_path, monkeypatch):
    cache, log, sessions = tmp_path / "cache", tmp_path / "work.log", 4
    monkeypatch.setenv("LAB_CACHE_DIR", str(cache))
    following: set[int] = set()
    guard = threading.Lock()
    everyone_follows = threading.Event()
    # The stand-in finishes once every session has shown its halfway message (or after 20 s): the waiting
    # sessions show the pretraining's progress, not a frozen bar.
    monkeypatch.setattr(demo_backbone, "pretrain", stand_in_pretrain(log, lambda: everyone_follows.wait(20)))
    monkeypatch.setattr(core.data.demo, "make_scenes_folder", counting_scenes(log))
    start = threading.Barrier(sessions)
    results, errors = {}, {}

    def session(i: int) -> None:
        def progress(_fraction: float, message: str) -> None:
            if message == HALFWAY:
                with guard:
                    following.add(i)
                    if len(following) == sessions:
                        everyone_follows.set()

        try:
            start.wait(10)
            results[i] = prepare_demo(per_class=PER_CLASS, progress=progress)
        except BaseException as exc:  # reported below, with the session it happened in
            errors[i] = exc

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert work_done(log) == ["pretrain", "scenes"]
    assert following == set(range(sessions))
    assert len({(r.source, r.backbone) for r in results.values()}) == 1 and len(results) == sessions
    assert sorted(r.pretrain is not None for r in results.values()) == [False] * (sessions - 1) + [True]
    demo = results[0]
    assert images_in(demo.source) == 3 * PER_CLASS and (demo.backbone / INFO_FILE).is_file()
    assert leftovers(cache) == []


def prepare_in_a_process(cache: str, log: str, start, out: str) -> None:
    """One process of several asking for the demo at once, with the stand-ins of the thread test."""
    os.environ["LAB_CACHE_DIR"] = cache
    demo_backbone.pretrain = stand_in_pretrain(Path(log))
    core.data.demo.make_scenes_folder = counting_scenes(Path(log))
    start.wait(60)
    demo = prepare_demo(per_class=PER_CLASS)
    Path(out).write_text(json.dumps([demo.source, str(demo.backbone)]))


def test_processes_preparing_the_demo_at_once_prepare_it_once(tmp_path):
    cache, log, processes = tmp_path / "cache", tmp_path / "work.log", 3
    # Spawned, not forked: the test process may hold TensorFlow's threads.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    outs = [tmp_path / f"out-{i}.json" for i in range(processes)]
    workers = [context.Process(target=prepare_in_a_process, args=(str(cache), str(log), start, str(out)))
               for out in outs]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(180)
    finally:
        for worker in workers:
            if worker.is_alive():  # stuck: the test fails below, without leaving the process behind
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * processes
    assert work_done(log) == ["pretrain", "scenes"]
    results = {tuple(json.loads(out.read_text())) for out in outs}
    assert len(results) == 1
    source, backbone = results.pop()
    assert images_in(source) == 3 * PER_CLASS and (Path(backbone) / INFO_FILE).is_file()
    assert leftovers(cache) == []


def test_a_killed_or_failed_preparation_is_never_used_and_its_leftovers_go(tmp_path, monkeypatch):
    cache, log = tmp_path / "cache", tmp_path / "work.log"
    monkeypatch.setenv("LAB_CACHE_DIR", str(cache))
    monkeypatch.setattr(core.data.demo, "make_scenes_folder", counting_scenes(log))

    def failing(path, progress=None, seed=0):
        Path(path).mkdir(exist_ok=True)
        (Path(path) / "half-written").write_text("x")
        raise KeyboardInterrupt  # as a stopped session or Ctrl-C would

    monkeypatch.setattr(demo_backbone, "pretrain", failing)
    try:
        prepare_demo(per_class=PER_CLASS + 1)
    except KeyboardInterrupt:
        pass
    assert not (cache / "demo" / f"backbone-v{BACKBONE_VERSION}").exists()
    assert leftovers(cache) == []
    # A builder killed outright (no clean-up ran) leaves its temporary folder behind.
    killed = cache / "demo" / f".backbone-v{BACKBONE_VERSION}.tmp-4242"
    killed.mkdir()
    (killed / "saved_model.pb").write_bytes(b"half")
    monkeypatch.setattr(demo_backbone, "pretrain", stand_in_pretrain(log, lambda: None))
    demo = prepare_demo(per_class=PER_CLASS)  # another size: the dataset is drawn again and replaced
    assert demo.pretrain is not None and images_in(demo.source) == 3 * PER_CLASS
    assert work_done(log) == ["pretrain", "scenes", "scenes"]
    assert leftovers(cache) == []
