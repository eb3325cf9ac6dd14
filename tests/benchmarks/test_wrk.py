"""The benchmark's measuring glue: wrk's command line and summary, and the CPU accounting beside it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cpu, wrk

# What wrk 4.1 prints with benchmarks/post.lua: its own report, then the done() hook's line.
OUTPUT = """\
Running 10s test @ http://127.0.0.1:41234/v2/models/mnist_mlp/infer
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.72ms    3.10ms  48.20ms   81.00%
    Req/Sec     4.35k   210.11     4.80k    70.00%
  43512 requests in 10.00s, 9.10MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   4350.12
Transfer/sec:    931.22KB
WRK_RESULT {"duration_us": 10002000, "requests": 43512, "bytes": 9542000, "status_errors": 12, \
"connect_errors": 0, "read_errors": 1, "write_errors": 0, "timeouts": 2, "mean_us": 14720.5, "max_us": 48200, \
"p50_us": 14100, "p90_us": 18000, "p99_us": 24100, "p999_us": 40000}
"""


def test_parse_reads_the_done_hook_line() -> None:
    result = wrk.parse(OUTPUT)
    assert result.requests == 43512
    assert result.ok == 43500
    assert result.rps == pytest.approx(43500 / 10.002)
    assert result.socket_errors == 3
    assert (result.p50_us, result.p99_us, result.p999_us) == (14100, 24100, 40000)
    assert result.mean_us == 14720.5


def test_parse_without_the_line_says_what_wrk_printed() -> None:
    with pytest.raises(ValueError, match=r"no WRK_RESULT line.*unable to connect"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_post_lua_prints_every_field_parse_expects() -> None:
    printed = re.findall(r'"(\w+)": %', wrk.LUA_SCRIPT.read_text())
    assert printed == [f.name for f in dataclasses.fields(wrk.WrkResult)]


def test_command_pins_wrk_and_passes_body_and_headers_to_the_script() -> None:
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "151"}
    cmd = wrk.command("http://127.0.0.1:9/v2/models/m/infer", Path("b.body"), headers, 64, 10, "1")
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert cmd[3:7] == ["wrk", "-t1", "-c64", "-d10s"]
    assert cmd[cmd.index("-s") + 1] == str(wrk.LUA_SCRIPT)
    assert cmd[cmd.index("--") :] == [
        "--",
        "b.body",
        "Content-Type:application/octet-stream",
        "Inference-Header-Content-Length:151",
    ]


def test_command_never_starts_more_threads_than_connections() -> None:
    cmd = wrk.command("http://127.0.0.1:9/", Path("b.body"), {}, 1, 3, None)
    assert cmd[0] == "wrk"
    assert "-t1" in cmd


def test_busy_ticks_sums_user_nice_system_and_steal_of_the_chosen_cpus() -> None:
    stat = (
        "cpu  900 9 90 9000 9 9 9 9 0 0\n"
        "cpu0 100 1 10 1000 5 6 7 2 0 0\n"
        "cpu1 300 3 30 3000 5 6 7 4 0 0\n"
        "intr 12345 0 0\n"
    )
    assert cpu.busy_ticks({0}, stat) == 113
    assert cpu.busy_ticks({0, 1}, stat) == 113 + 337


def test_tree_seconds_counts_a_process_and_its_children() -> None:
    burn = (
        "import sys, time\n"
        "end = time.process_time() + 0.2\n"
        "while time.process_time() < end: pass\n"
        "print('ok', flush=True)\n"
        "sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ok\n"  # the child has burnt its 0.2 s
        child_seconds = cpu.tree_seconds(child.pid)
        assert child_seconds >= 0.15
        assert cpu.tree_seconds(os.getpid()) >= child_seconds
    finally:
        child.communicate(b"")
