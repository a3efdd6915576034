"""Part "checkpoint": what the checkpoints' checksums cost, at the F1 paper size.

The state is F1's whole train state at the paper's size (784-512x5-10, as the
other parts build it): parameters, batch statistics, momentum, w0, keys and
counters. Four candidates are timed interleaved in the same rounds:

* a save with checksums (a SHA-256 digest of every array, written before the
  checkpoint: ``bigbatch_jax.training.checkpoint_digest``), and without,
* a restore that checks the digests, and one that does not,

each save to a new step of a temporary directory keeping two (so orbax's
deletion of the oldest is in both), each restore of the same written step.
The digest alone (hashing every array on the host) is a fifth row.
"""

from __future__ import annotations

import itertools
import tempfile

import jax

from bigbatch_jax.training import checkpoint_digest
from bigbatch_jax.training.checkpoint import Checkpointer, to_saveable
from experiments.benchmarks import steps, timing
from experiments.benchmarks.report import Section, Target

# The checksums stay on by default while they add at most this to a save or a restore.
TOLERANCE = 1.25


def _candidates(state, directory: str) -> dict:
  with_sums = Checkpointer(f"{directory}/with", checksums=True)
  without = Checkpointer(f"{directory}/without", checksums=False)
  for checkpointer in (with_sums, without):
    checkpointer.save(0, state)
  numbers = itertools.count(1)

  def save(checkpointer):
    return lambda: checkpointer.save(next(numbers), state)

  def restore(checkpointer):
    return lambda: checkpointer.restore(state, checkpointer.all_steps()[0])

  saveable = to_saveable(state)
  return {
    "save, with checksums": save(with_sums),
    "save, without": save(without),
    "restore, checking the checksums": restore(with_sums),
    "restore, without": restore(without),
    "the digests alone (host copy and SHA-256)": lambda: checkpoint_digest.array_digests(saveable),
  }


def run(args) -> list[Section]:
  built = steps.build_step(steps.f1_config("lb+lr+gbn", args.batch), hidden=args.hidden)
  state = built.state
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(to_saveable(state)))
  with tempfile.TemporaryDirectory() as directory:
    t = timing.interleaved(_candidates(state, directory), rounds=args.rounds, warmup=1)
  rows, targets = [], []
  pairs = {
    "save, with checksums": "save, without",
    "restore, checking the checksums": "restore, without",
  }
  for name in t.seconds:
    reference = pairs.get(name)
    ratio = t.ratio(name, reference) if reference else None
    rows.append([name, timing.fmt_ms(t.median(name)), "" if ratio is None else f"{ratio:.3f}"])
    if reference:
      targets.append(
        Target(f"checksums' cost: {name}", ratio, f"<= {TOLERANCE}", ratio <= TOLERANCE)
      )
  text = (
    f"F1 {args.hidden}x5 on 784 inputs: the whole train state, {size / 2**20:.1f} MiB, "
    f"{args.rounds} interleaved rounds (medians; the ratio is the median over rounds of the "
    "row's time over its counterpart's without checksums in the same round). Saves are "
    "synchronous (a failed write ends the run at once), to a local disk."
  )
  return [
    Section(
      "Checkpoint checksums: save and restore time",
      ["operation", "ms", "ratio to without"],
      rows,
      text,
      targets,
    )
  ]
