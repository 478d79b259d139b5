"""What `seal edit` is asked to do, checked before anything heavy happens. Torch-free.

    >>> req = EditRequest(passage=Path("notes.json"), candidates=2)
    >>> req.lr, req.epochs, req.threads
    (0.0003, 2, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# The default edit recipe, one place for `seal edit`, `seal learn`'s edits, the trainer and the
# benches. lr 3e-4, not SEAL's 1e-3: on one passage with four implication lines (SmolLM2-135M, 2 CPU
# threads, measured by hand when the trainer landed; no bench file), 1e-3 cost 0.14-0.19 nats of JS
# against the base and anchor retention 0.575 -> 0.40-0.45, while 3e-4 kept the same 2 of 3 answers
# with JS 0.12 and retention 0.55.
DEFAULT_STYLE = "implications"
DEFAULT_TEMPERATURE = 0.7
DEFAULT_LR = 3e-4
# 2 (was 5, and 10 before that): the restatements and replay lines make a passage's training set
# about three times as long, so 2 passes give about the optimizer steps that 5 gave before (30 on
# a SEAL passage), and forgetting grows with steps (the recipe sweep: 10 epochs cost 0.03
# retention per edit for no gain). bench/placebo_calibration.py --recipes compares 2 and 5.
DEFAULT_EPOCHS = 2
DEFAULT_R = 32
DEFAULT_ALPHA = 64
DEFAULT_TARGETS = "all-linear"
# Drop the self-edit lines the passage does not support (under half their words in it) before
# training: the recipe sweep in the README (bench/recipe_sweep.py, 20 SEAL passages).
DEFAULT_FILTER = True
# Add the passage's own sentences, each under the title, to the training data: faithful,
# title-keyed restatements (facts become answerable after varied, faithful restatements; the
# issue's hand-written title-keyed lines taught where the model's own lines did not).
DEFAULT_RESTATE = True
# Draw the base's own continuations of neutral prompts (editor/replay.py): each accepted edit's
# forgetting adds up along a branch. Trained on (--kl 0), replay cut it by two thirds in the
# November recipe sweep at the same F1; with the KL anchor (the default) they are its texts.
DEFAULT_REPLAY = True
# > 0: the replay lines (with --replay) and a few chat prompts anchor a KL penalty to the parent,
# this weight times KL(parent || adapter) per step (editor/kl_anchor.py), and the replay lines are
# not trained on. bench/recipe_sweep.py compares it with replay trained on (README, the recipe sweep).
# Weight 4, not 1: in a 16-passage paired sweep it lost fewer of the base's refusals per edit
# (-0.008 [-0.015, -0.002]) and passed as often (0.56 both), and the refusal gate was what ended
# the weight-1 stream's acceptances (README, "KL weight 4").
DEFAULT_KL = 4.0
# K > 1 on a CPU: every candidate trains this share of its steps, then only the one whose answer
# margins rose most trains on (editor/race.py): K candidates for about the training of
# 1 + K x share (README, "K candidates"). 0: every candidate trains to the end.
DEFAULT_RACE = 0.25


@dataclass
class EditRequest:
    """Everything `seal edit` takes. Defaults, and why, are in the README.

    Exactly one of ``passage`` (one file), ``examples`` (JSONL of prompt/completion) and
    ``passages`` (a stream: a JSONL file or ``"-"`` for stdin) names the material.
    """

    passage: Path | None = None
    examples: Path | None = None
    passages: Path | str | None = None
    eval: Path | None = None
    candidates: int = 1
    style: str = DEFAULT_STYLE
    temperature: float = DEFAULT_TEMPERATURE
    filter_lines: bool = DEFAULT_FILTER
    restate: bool = DEFAULT_RESTATE
    replay: bool = DEFAULT_REPLAY
    kl: float = DEFAULT_KL
    race: float = DEFAULT_RACE
    top_p: float = 0.95
    max_new_tokens: int = 256
    r: int = DEFAULT_R
    alpha: int = DEFAULT_ALPHA
    target_modules: str | list[str] = DEFAULT_TARGETS
    lr: float = DEFAULT_LR
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 1
    seed: int = 0
    device: str = "auto"
    require_gpu: bool = False
    message: str = ""
    allow_pii: bool = False
    track: bool = True
    answer_tokens: int = 48
    threads: int | None = None
    # The fast path: adapters merged into fp32 weights for scoring, shared prompt prefixes, and K
    # candidates trained in one batched pass on CUDA. Off only to compare against the plain path.
    fast: bool = True
    # Ray workers (seal.editor.cluster): how many, and the address of a running cluster (else a
    # local Ray is started on 127.0.0.1 for the command).
    workers: int | None = None
    ray: str | None = None
    # Who writes the self-edits of a passage (editor/writer.py): the tip of refs/writers/main when
    # there is one, a writer REV (or a resolved seal.editor.writer.Writer), the model at the parent
    # (no_writer), or a file of self-edits written elsewhere, labelled with its source.
    writer: object = None
    no_writer: bool = False
    self_edits: object = None
    source: str | None = None


__all__ = ["EditRequest", "DEFAULT_STYLE", "DEFAULT_TEMPERATURE", "DEFAULT_LR", "DEFAULT_EPOCHS",
           "DEFAULT_R", "DEFAULT_FILTER", "DEFAULT_KL", "DEFAULT_RACE", "DEFAULT_ALPHA", "DEFAULT_TARGETS"]
