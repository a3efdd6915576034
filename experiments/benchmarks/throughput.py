"""Part "step": F1 train-step throughput against BatchNorm, the chunked reference and the peak.

All candidates are timed interleaved in the same rounds (see timing.py), so
the ratios compare runs under the same machine load:

* ``GhostBatchNorm`` — the library's step (f1 config ``lb+lr+gbn``: ghost
  batches of 128, clip at 5, weight decay, momentum SGD, sqrt scaling,
  metrics and weight distances), built as ``train_and_evaluate`` builds it.
* ``flax BatchNorm`` — the same step with ``flax.linen.BatchNorm``.
* ``chunked reference`` — bigBatch ``main_gbn.py``: 32 chunks one after
  another in a ``lax.scan`` with gradient accumulation, then the optimizer.
* ``dots only`` — just the step's matrix products, same shapes.
* ``jnp.dot peak`` — float32 N x N matrices: the machine's measured limit.
"""

from __future__ import annotations

from experiments.benchmarks import profile, steps, timing
from experiments.benchmarks.report import Section, Target

PROPOSED = "GBN step, proposed one-pass normalize (prototype)"
STEPS_PER_CALL = 4
SCANNED = f"GBN step, steps_per_call={STEPS_PER_CALL} (per update)"
BF16 = "GBN step, compute_dtype=bfloat16"


def _fraction_of_peak(
  t: timing.Timings, name: str, flops: int, peak_flops: int, updates: int = 1
) -> float:
  """(flops / time(name)) / (peak_flops / time(peak)), per round, median."""
  return updates * flops / peak_flops * t.ratio("jnp.dot peak", name)


def run(args) -> list[Section]:
  batch = args.batch
  config = steps.f1_config("lb+lr+gbn", batch)
  gbn = steps.build_step(config, hidden=args.hidden)
  bn = steps.build_step(config, norm=steps.flax_batch_norm(config), hidden=args.hidden)
  fused = steps.build_step(config, norm=steps.fused_ghost_batch_norm(config), hidden=args.hidden)
  candidates = {
    "jnp.dot peak": steps.square_matmul(args.peak_size),
    "dots only": steps.step_dots(batch, args.hidden),
    "GhostBatchNorm step": gbn.run,
    "flax BatchNorm step": bn.run,
    PROPOSED: fused.run,
    BF16: steps.build_step(
      steps.f1_config("lb+lr+gbn", batch, compute_dtype="bfloat16"), hidden=args.hidden
    ).run,
    SCANNED: steps.build_step(config, hidden=args.hidden, steps_per_call=STEPS_PER_CALL).run,
  }
  # Updates per call of each candidate (times and rates below are per update).
  per_call = {SCANNED: STEPS_PER_CALL}
  if args.hidden == 512:
    candidates["chunked reference"] = steps.chunked_reference_step(config).run
    ghost = config.ghost_batch_size
    candidates[f"dots only, {batch // ghost} chunks of {ghost}"] = steps.step_dots(
      batch, args.hidden, chunk=ghost
    )
  t = timing.interleaved(candidates, rounds=args.rounds)

  flops = steps.step_flops(batch, args.hidden)
  peak_flops = steps.matmul_flops(args.peak_size)
  peak_rate = peak_flops / t.median("jnp.dot peak")
  rows = []
  for name in candidates:
    k = per_call.get(name, 1)
    seconds = t.median(name) / k
    lo, hi = (x / k for x in t.spread(name))
    work = peak_flops if name == "jnp.dot peak" else flops
    frac = 1.0 if name == "jnp.dot peak" else _fraction_of_peak(t, name, flops, peak_flops, k)
    examples = "" if name == "jnp.dot peak" else f"{batch / seconds:,.0f}"
    rows.append(
      [
        name,
        timing.fmt_ms(seconds),
        f"{timing.fmt_ms(lo)}-{timing.fmt_ms(hi)}",
        examples,
        f"{work / seconds / 1e9:.1f}",
        f"{frac:.3f}",
        "" if name == "jnp.dot peak" else f"{t.ratio(name, 'GhostBatchNorm step') / k:.3f}",
      ]
    )
  gbn_vs_bn = t.ratio("GhostBatchNorm step", "flax BatchNorm step")
  fraction = _fraction_of_peak(t, "GhostBatchNorm step", flops, peak_flops)
  dots_fraction = _fraction_of_peak(t, "dots only", flops, peak_flops)
  proposed_vs_bn = t.ratio(PROPOSED, "flax BatchNorm step")
  proposed_fraction = _fraction_of_peak(t, PROPOSED, flops, peak_flops)
  targets = [
    Target(
      "GhostBatchNorm step / flax BatchNorm step",
      gbn_vs_bn,
      "<= 1.05",
      gbn_vs_bn <= 1.05,
      "IQR of the per-round ratio "
      + "-".join(f"{r:.3f}" for r in t.ratio_spread("GhostBatchNorm step", "flax BatchNorm step"))
      + f"; with the proposed one-pass normalize: {proposed_vs_bn:.3f}",
    ),
    Target(
      "step's FLOP rate / jnp.dot peak",
      fraction,
      ">= 0.75",
      fraction >= 0.75,
      f"the dots alone reach {dots_fraction:.3f}; with the proposed one-pass normalize: "
      f"{proposed_fraction:.3f}; see the profile below",
    ),
  ]
  if "chunked reference" in candidates:
    speedup = t.ratio("chunked reference", "GhostBatchNorm step")
    targets.insert(
      1,
      Target(
        "chunked reference / GhostBatchNorm step (speed-up)",
        speedup,
        ">= 2",
        speedup >= 2,
        "see 'Reading the step numbers'",
      ),
    )
  text = (
    f"F1 (784-{args.hidden}x5-10) at batch {batch}, {args.rounds} interleaved rounds; "
    f"median ms and the 25-75% range over rounds. FLOPs counted from the dots: "
    f"{flops / 1e9:.2f} GFLOP per step (forward, weight gradients, input gradients "
    f"but the first layer's). Peak: jnp.dot of two float32 {args.peak_size}x{args.peak_size} "
    f"matrices, {peak_rate / 1e9:.1f} GFLOP/s median in this run. 'fraction' is the "
    "per-round FLOP rate over the same round's peak rate (median); 'vs GBN' the per-round "
    "time ratio to the GhostBatchNorm step. The steps_per_call row runs the library's "
    f"`train_steps` ({STEPS_PER_CALL} updates per jitted call, lax.scan); its times are per "
    "update. The bfloat16 row computes in bf16 (parameters float32) and is still rated "
    "against the float32 peak."
  )
  sections = [
    Section(
      f"Train-step throughput (batch {batch})",
      ["step", "ms", "IQR ms", "examples/s", "GFLOP/s", "fraction of peak", "vs GBN"],
      rows,
      text,
      targets,
    )
  ]
  sections.append(Section("Reading the step numbers", [], [], ANALYSIS))
  if args.profile:
    sections += _profile_sections(gbn, "GhostBatchNorm step", args)
    sections += _profile_sections(fused, PROPOSED, args)
  return sections


ANALYSIS = """\
* **Where the time outside the dots goes** (the profile tables below): the
  optimizer chain, weight distances and metrics together cost well under 1% of
  the step. The gap between the dots alone and the step is the memory-bound
  passes over the (batch, 512) activations of the five hidden layers: the
  Dense bias add, the ghost statistics, the normalization, ReLU, and their
  backward passes. Each such pass streams 8 MiB at batch 4096 and runs at
  memory bandwidth, while the dots run at the FLOP rate. flax's `_normalize`,
  which GhostBatchNorm calls, writes `x - mean` and the scaled product as
  separate tensors kept for the backward pass (the "norm fwd sub" and "norm
  fwd mul" ops): the largest single non-dot cost, and the reason the ghost
  step is slower than the flax BatchNorm step, whose whole-batch shapes XLA
  fuses better. The proposed one-pass normalize (proposed.py: fold the ghost
  statistics into a per-ghost affine map, `y = x * mul + (bias - mean * mul)`)
  removes those tensors; its row and profile are measured here with a
  benchmark-local subclass of GhostBatchNorm.
* **The chunked reference is not 2x slower on this CPU; it is as fast or
  faster.** Its dots, 32 chunks of 128 rows in a `lax.scan` (the "dots only,
  32 chunks" row), run as fast as or faster than the batch-4096 dots: a
  128x512 by 512x512 product already fills two CPU cores, and each chunk's
  activations (256 KiB) stay in cache, so its normalization, ReLU and bias
  passes run at cache speed instead of streaming 8 MiB tensors through
  memory. The same cache effect can put those chunk dots above the "peak" of
  a 4096x4096 product, whose operands do not fit in cache. The 2x target
  assumes a GPU, where a 128-row product leaves most of the device idle and 32
  sequential chunks serialize kernel launches; the device tool lent no GPU to
  this run, so that case is not measured here.
* **Noise.** The machine's two cores are shared with other jobs (load average
  in the Machine table); single medians move by 10-30% between runs, the
  per-round ratios much less. Targets within a few percent of their bound
  (e.g. GhostBatchNorm / BatchNorm near 1.05) can flip between runs: read
  their IQR.
"""


def _profile_sections(built: steps.Built, name: str, args) -> list[Section]:
  compiled = built.fn.lower(built.state, built.batch).compile().as_text()
  result = profile.profile_step(built.run, compiled, steps=args.profile_steps)
  wall = result["wall_ms"]
  rows = [[name, f"{ms:.1f}", f"{ms / wall:.1%}"] for name, ms in result["categories"].items()]
  rows.append(["wall time per step (traced)", f"{wall:.1f}", "100%"])
  kinds = profile.op_kind_summary(result["top_ops"])
  kind_rows = [[k, str(n), f"{ms:.1f}", f"{ms / wall:.1%}"] for k, (n, ms) in kinds.items()][:14]
  text = (
    f"One jax.profiler trace of the {name} (the XLA CPU runtime records every "
    "executed op; ops are attributed by their JAX op_name from the compiled HLO). Busy "
    "time summed over the runtime's threads, per step."
  )
  return [
    Section(f"Profile of the {name}", ["category", "ms", "share"], rows, text),
    Section(
      f"Largest non-dot ops of the {name}",
      ["where, direction, op, shape", "ops", "ms", "share"],
      kind_rows,
      "Grouped by layer kind, forward/backward, the op that names the fusion, and its shape.",
    ),
  ]
