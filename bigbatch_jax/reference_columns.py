"""Each Hoffer et al. Table 1 column as the bigBatch reference code runs it.

The reference (github.com/eladhoffer/bigBatch, commit 0c69f28) has two
training scripts with different rules, and ``run_experiments.sh`` runs each
column with one of them, at its own batch size and flags:

* ``main_normal.py`` (no Ghost BN): ``--lr_bb_fix`` (its default: True)
  multiplies the lr by sqrt(B / 256); ``--regime_bb_fix`` multiplies every
  regime epoch and ``--epochs`` by ceil(B / 256).
* ``main_gbn.py`` (Ghost BN over ``--mini-batch-size`` chunks, Hoffer
  Algorithm 1): ``--lr_bb_fix`` multiplies the lr by sqrt(B / mini), and
  ``--regime_bb_fix`` the epochs by ceil(B / mini), the "identical number of
  steps" of Hoffer section 5.

``SCRIPT_COLUMNS`` holds, per model row, the command of each column:
``run_experiments.sh``'s lines where it has one (MNIST F1: LB and +LR at
``-b 2048`` with ``main_normal.py``, +GBN at 4096 with ``main_gbn.py
--mini-batch-size 128``), and otherwise the command the column's flags imply,
marked ``inferred`` with the reason (SB: ``main_normal.py -b 128`` with its
defaults, so lr 0.1 x sqrt(128 / 256); +RA: +GBN's command with
``--regime_bb_fix``). A row or column the table does not name takes
:func:`default_column`, the same pattern at the config's batch sizes.

The table's sizes are the scripts'; a config whose base or large batch differs
from the row's declared ones (``ScriptRow.base_batch_size``,
``large_batch_size``; e.g. the MNIST-1D Table 1 preset, 64 and 1024) gets them
scaled: the small sizes (SB's batch, ``--mini-batch-size`` and
``main_normal.py``'s 256) by the base batch's ratio, the large batches by the
large batch's ratio, so at the declared sizes they are the scripts' numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

MAIN_NORMAL = "main_normal.py"
MAIN_GBN = "main_gbn.py"
SCRIPTS = (MAIN_NORMAL, MAIN_GBN)
MAIN_NORMAL_BATCH_SIZE = 256  # main_normal.py's lr base and stretch unit (its help text says 128)


@dataclasses.dataclass(frozen=True)
class ScriptColumn:
  """One column's command: script, ``-b``, ``--mini-batch-size`` and the two flags.

  Attributes:
    script: ``"main_normal.py"`` or ``"main_gbn.py"``.
    batch_size: ``-b``.
    mini_batch_size: ``--mini-batch-size`` (main_gbn.py's ghost batch); None
      for main_normal.py.
    lr_bb_fix: ``--lr_bb_fix`` (both scripts' default) or ``--no-lr_bb_fix``.
    regime_bb_fix: ``--regime_bb_fix`` or ``--no-regime_bb_fix`` (the default).
    epochs: ``--epochs``, before any stretch.
    source: ``"run_experiments.sh"``, or ``"inferred: ..."`` with the reason.
  """

  script: str
  batch_size: int
  mini_batch_size: int | None
  lr_bb_fix: bool
  regime_bb_fix: bool
  epochs: float
  source: str = "run_experiments.sh"
  # main_normal.py's 256 (lr base and stretch unit), scaled with the base batch.
  normal_unit: int = MAIN_NORMAL_BATCH_SIZE

  def __post_init__(self):
    if self.script not in SCRIPTS:
      raise ValueError(f"script {self.script!r}; valid: {SCRIPTS}")
    if (self.script == MAIN_GBN) != (self.mini_batch_size is not None):
      raise ValueError(f"{self.script} with mini_batch_size={self.mini_batch_size!r}")

  @property
  def lr_base(self) -> int:
    """The batch the script's lr rule and stretch divide by: 256, or the mini-batch."""
    return self.normal_unit if self.mini_batch_size is None else self.mini_batch_size

  @property
  def lr_scale(self) -> float:
    """The factor on the regime's lr: sqrt(B / lr_base) with ``--lr_bb_fix``, else 1."""
    return math.sqrt(self.batch_size / self.lr_base) if self.lr_bb_fix else 1.0

  @property
  def regime_stretch(self) -> int:
    """The factor on every regime epoch: ceil(B / lr_base) with ``--regime_bb_fix``, else 1."""
    return math.ceil(self.batch_size / self.lr_base) if self.regime_bb_fix else 1

  @property
  def command(self) -> str:
    """The column's command line (the flags that decide the run)."""
    parts = [f"python {self.script}", f"-b {self.batch_size}", f"--epochs {self.epochs:g}"]
    if self.mini_batch_size is not None:
      parts.append(f"--mini-batch-size {self.mini_batch_size}")
    parts.append("--lr_bb_fix" if self.lr_bb_fix else "--no-lr_bb_fix")
    parts.append("--regime_bb_fix" if self.regime_bb_fix else "--no-regime_bb_fix")
    return " ".join(parts)

  def scaled(
    self, row_base_batch_size: int, base_ratio: float, large_ratio: float, epochs_ratio: float
  ) -> ScriptColumn:
    """The column at a config's sizes: small sizes x ``base_ratio``, large x ``large_ratio``.

    A ``-b`` equal to the row's base batch is small; ``--epochs`` is scaled by
    ``epochs_ratio`` (the config's regime epochs over the row's).
    """

    def size(value: int, ratio: float, what: str) -> int:
      out = value * ratio
      if out != int(out) or out < 1:
        raise ValueError(
          f"{self.command}: {what} {value} scaled by {ratio:g} to the config's batch sizes is "
          f"{out:g}, not a positive integer; choose base/large batch sizes for which it is"
        )
      return int(out)

    batch_ratio = base_ratio if self.batch_size == row_base_batch_size else large_ratio
    mini = self.mini_batch_size
    return dataclasses.replace(
      self,
      batch_size=size(self.batch_size, batch_ratio, "-b"),
      mini_batch_size=None if mini is None else size(mini, base_ratio, "--mini-batch-size"),
      epochs=self.epochs * epochs_ratio,
      normal_unit=size(self.normal_unit, base_ratio, "main_normal.py's unit"),
    )


@dataclasses.dataclass(frozen=True)
class ScriptRow:
  """A model row: the sizes its config declares and the scripts' command per column."""

  base_batch_size: int
  large_batch_size: int
  epochs: float  # the config's declared regime epochs
  columns: Mapping[str, ScriptColumn]


def _f1_columns() -> dict[str, ScriptColumn]:
  gbn = ScriptColumn(MAIN_GBN, 4096, 128, True, False, 50)
  return {
    "sb": ScriptColumn(
      MAIN_NORMAL, 128, None, True, False, 50,
      "inferred: run_experiments.sh has no MNIST SB line; main_normal.py -b 128 with its "
      "defaults (--lr_bb_fix), so lr 0.1 x sqrt(128/256)",
    ),
    "lb": ScriptColumn(MAIN_NORMAL, 2048, None, False, False, 50),
    "lb+lr": ScriptColumn(MAIN_NORMAL, 2048, None, True, False, 50),
    "lb+lr+gbn": gbn,
    "lb+lr+gbn+ra": dataclasses.replace(
      gbn,
      regime_bb_fix=True,
      source="inferred: run_experiments.sh has no MNIST +RA line; +GBN's command with "
      "--regime_bb_fix (main_gbn.py stretches by ceil(B / mini), Hoffer sec. 5)",
    ),
  }  # fmt: skip


def _cifar_gbn_row(epochs: float) -> dict[str, ScriptColumn]:
  return {"lb+lr+gbn": ScriptColumn(MAIN_GBN, 4096, 128, True, False, epochs)}


# Model name -> the scripts' commands (run_experiments.sh; "inferred" marks the rest).
SCRIPT_COLUMNS: dict[str, ScriptRow] = {
  "f1": ScriptRow(128, 4096, 50.0, _f1_columns()),
  "resnet44": ScriptRow(
    128,
    4096,
    200.0,
    {
      "lb": ScriptColumn(MAIN_NORMAL, 2048, None, False, False, 100),
      "lb+lr": ScriptColumn(MAIN_NORMAL, 2048, None, True, False, 100),
      "lb+lr+ra": ScriptColumn(MAIN_NORMAL, 2048, None, True, True, 100),
      "lb+lr+gbn": ScriptColumn(MAIN_GBN, 2048, 256, True, False, 100),
    },
  ),
  "wrn16_4": ScriptRow(
    256, 4096, 200.0, {"lb+lr+ra": ScriptColumn(MAIN_NORMAL, 1024, None, True, True, 100)}
  ),
  "c1": ScriptRow(128, 4096, 200.0, _cifar_gbn_row(200)),
  "c3": ScriptRow(128, 4096, 200.0, _cifar_gbn_row(200)),
}


def default_column(
  variant_name: str,
  *,
  large_batch: bool,
  ghost_batch_norm: bool,
  lr_scaled: bool,
  regime_adaptation: bool,
  base_batch_size: int,
  large_batch_size: int,
  ghost_batch_size: int | None,
  epochs: float,
) -> ScriptColumn:
  """The command a column's flags imply where ``run_experiments.sh`` has no line for it.

  Ghost BN exists only in ``main_gbn.py`` (mini-batch = the ghost size); the
  rest runs ``main_normal.py``. SB keeps the scripts' default ``--lr_bb_fix``.
  """
  batch = large_batch_size if large_batch else base_batch_size
  gbn = ghost_batch_norm
  return ScriptColumn(
    MAIN_GBN if gbn else MAIN_NORMAL,
    batch,
    (ghost_batch_size or base_batch_size) if gbn else None,
    lr_scaled or not large_batch,
    regime_adaptation,
    epochs,
    f"inferred: no run_experiments.sh line for {variant_name!r}; the script and flags its "
    "remedies imply",
  )


def script_column(
  model: str,
  variant_name: str,
  *,
  base_batch_size: int,
  large_batch_size: int,
  epochs: float,
  **flags,
) -> ScriptColumn:
  """The column's command at the config's sizes: the table's (scaled), else the default.

  Args:
    model: the config's model (a ``SCRIPT_COLUMNS`` key, or any other).
    variant_name: the column (``"sb"``, ``"lb+lr+gbn+ra"``, ...).
    base_batch_size: the config's B_S.
    large_batch_size: the config's B_L.
    epochs: the config's regime epochs.
    **flags: :func:`default_column`'s remaining arguments (the variant's parts).

  Returns:
    A :class:`ScriptColumn`.
  """
  row = SCRIPT_COLUMNS.get(model)
  parts = frozenset(variant_name.split("+"))
  names = {frozenset(name.split("+")): name for name in (row.columns if row else ())}
  if row is None or parts not in names:
    return default_column(
      variant_name,
      base_batch_size=base_batch_size,
      large_batch_size=large_batch_size,
      epochs=epochs,
      **flags,
    )
  return row.columns[names[parts]].scaled(
    row.base_batch_size,
    base_batch_size / row.base_batch_size,
    large_batch_size / row.large_batch_size,
    epochs / row.epochs,
  )
