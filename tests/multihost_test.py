"""Multi-host: 2 processes x 2 CPU devices (jax.distributed, gloo) train bit for bit as one
process with 4 devices; the launcher's failure handling.

The reference run uses 4 of the session's 8 CPU devices (tests/conftest.py) in this process:
a sharded computation only involves the devices of its mesh, so a sub-mesh is a genuine
4-device single-process run (the launcher's ``run_multiprocess(1, 4, ...)``, a fresh process
with exactly 4 devices, gives the same bits; ``--compare`` of the example does that), and it
saves a process start and a compilation.
"""

import os
import sys
import time

import jax
import numpy as np
import pytest

import biased_compression as bc
from biased_compression.examples import multihost

PROCESSES = 2
DEVICES_PER_PROCESS = 2
N = PROCESSES * DEVICES_PER_PROCESS


def _assert_bit_identical(got: multihost.Result, want: multihost.Result) -> None:
  assert sorted(got.params) == sorted(want.params)
  for name, value in want.params.items():
    assert got.params[name].dtype == value.dtype == np.float32
    # compare the bits (also tells -0.0 from 0.0 and would catch NaN payloads)
    np.testing.assert_array_equal(got.params[name].view(np.uint32), value.view(np.uint32), name)
  np.testing.assert_array_equal(got.losses.view(np.uint32), want.losses.view(np.uint32))
  np.testing.assert_array_equal(got.bits, want.bits)
  assert got.checksum() == want.checksum()


@pytest.mark.slow  # two JAX processes start, compile and train: 10 s or more each on 2 cores
@pytest.mark.parametrize("method", ["all_gather", "two_stage"])
def test_two_processes_equal_one_process_with_four_devices(method):
  # two_stage: the 1-bit all-reduce of DeepSpeed and Bagua (a sparsifier's k must be a
  # multiple of n per leaf there, which the ratio of the example's small leaves is not)
  compressor = "scaled_sign" if method == "two_stage" else "top_k"
  config = multihost.Config(steps=30, method=method, compressor=compressor)
  got = multihost.run_multiprocess(PROCESSES, DEVICES_PER_PROCESS, config, timeout=120)
  assert (got.num_processes, got.num_devices) == (PROCESSES, N)
  want = multihost.train(config, jax.devices()[:N])
  assert (want.num_processes, want.num_devices) == (1, N)
  _assert_bit_identical(got, want)
  # it trained, and every worker sent the same, compressed, number of bits
  assert got.loss[-1] < 0.25 * got.loss[0]
  assert got.bits.shape == (N,) and (got.bits == got.bits[0]).all()
  dense = 32 * sum(v.size for v in got.params.values()) * config.steps
  assert 0 < got.bits[0] < dense / 8


@pytest.mark.slow  # two JAX processes start, compile and train
def test_two_processes_equal_one_process_for_powersgd():
  config = multihost.Config(steps=30, rank=2)
  got = multihost.run_multiprocess(PROCESSES, DEVICES_PER_PROCESS, config, timeout=120)
  want = multihost.train(config, jax.devices()[:N])
  # the float32 all-reduce sums in another order across processes (gloo) than on one host:
  # equal to rounding (amplified by 30 Gram-Schmidt steps), not bit for bit as the gathered
  # payloads of error feedback are
  for name, value in want.params.items():
    np.testing.assert_allclose(got.params[name], value, rtol=1e-3, atol=2e-5, err_msg=name)
  np.testing.assert_allclose(got.losses, want.losses, rtol=1e-4, atol=1e-6)
  assert got.loss[-1] < 0.25 * got.loss[0]
  # w1 (16 x 32) as rank-2 factors; b1, w2, b2 (65 values) dense; two float32 all-reduces
  assert (got.bits == 32 * ((16 + 32) * 2 + 65) * config.steps).all()


@pytest.mark.slow  # trains the example (and reads its compiled step's traffic)
def test_a_train_step_sends_only_the_compressed_payloads():
  # Guards the shard_map pitfall of the example: jax.grad of replicated parameters under
  # check_vma=True would add a dense all-reduce of the gradients.
  config = multihost.Config(steps=3, method="all_gather")
  run, args = multihost.setup(config, jax.devices()[:N])
  traffic = bc.wire_bytes(run, *args)
  assert {op["op"] for op in traffic["ops"]} == {"all_gather"}
  result = multihost.train(config, jax.devices()[:N])
  bits_per_step = int(result.bits[0]) // config.steps
  assert traffic["sent"] == (N - 1) * bits_per_step // 8


def _fake_workers(monkeypatch, scripts):
  """Replaces the worker processes by Python one-liners, one per process id."""

  def command(process_id, *args):
    del args
    return [sys.executable, "-c", scripts[process_id]]

  monkeypatch.setattr(multihost, "_worker_command", command)


def _sleeper(pid_file):
  """A worker that writes its pid to ``pid_file`` (atomically) and sleeps."""
  path = str(pid_file)
  return (
    f"import os, time\nopen({path + '.tmp'!r}, 'w').write(str(os.getpid()))\n"
    f"os.replace({path + '.tmp'!r}, {path!r})\ntime.sleep(60)"
  )


def _assert_gone(pid):
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)


def test_a_failing_process_stops_the_others_and_shows_its_stderr(monkeypatch, tmp_path):
  pid_file = tmp_path / "sleeper.pid"
  fail = (
    f"import os, sys, time\nwhile not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
    "print('worker exploded', file=sys.stderr); sys.exit(3)"
  )
  _fake_workers(monkeypatch, {0: _sleeper(pid_file), 1: fail})
  start = time.monotonic()
  with pytest.raises(multihost.WorkerError, match=r"(?s)process 1 of 2 .*status 3.*exploded"):
    multihost.run_multiprocess(2, 1, multihost.Config(steps=1), timeout=60)
  assert time.monotonic() - start < 30  # did not wait for the sleeper nor the timeout
  _assert_gone(int(pid_file.read_text()))


def test_a_hanging_run_is_killed_at_the_timeout(monkeypatch, tmp_path):
  pid_files = [tmp_path / f"{i}.pid" for i in range(2)]
  _fake_workers(monkeypatch, {i: _sleeper(f) for i, f in enumerate(pid_files)})
  start = time.monotonic()
  with pytest.raises(multihost.WorkerError, match=r"still running after 2 s"):
    multihost.run_multiprocess(2, 1, multihost.Config(steps=1), timeout=2)
  assert time.monotonic() - start < 30
  for f in pid_files:
    if f.exists():  # (a slow machine may not have started it)
      _assert_gone(int(f.read_text()))


def test_a_process_without_result_is_an_error(monkeypatch):
  _fake_workers(monkeypatch, {0: "pass"})
  with pytest.raises(multihost.WorkerError, match="left no result"):
    multihost.run_multiprocess(1, 1, multihost.Config(steps=1), timeout=60)


def test_command_line_rejects_bad_arguments(capsys):
  assert multihost.main(["--processes", "0"]) == 2
  assert multihost.main(["--steps", "0"]) == 2
  assert multihost.main(["--ratio", "2"]) == 2  # checked before any process starts
  with pytest.raises(SystemExit):
    multihost.main(["--compressor", "nope"])
  capsys.readouterr()
